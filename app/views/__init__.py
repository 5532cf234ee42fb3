"""Blueprints: the Workshop pages, free chat, the JSON API and the development wallet."""


def init_app(app):
    """Register the blueprints (the development wallet's only when it is the wallet in use)."""
    from ..events import sse
    from ..lightning import is_dev_wallet
    from . import api, chat, devpay, workshop

    app.register_blueprint(workshop.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(sse)
    if is_dev_wallet(app):
        app.register_blueprint(devpay.bp)

    @app.context_processor
    def agent_facts():
        from ..agent import get_agent
        agent = get_agent()
        return {"agent_label": agent.label,
                "agent_approximate": getattr(agent, "approximate_count", False)}
