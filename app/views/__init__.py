"""Blueprints: the Workshop pages, free chat, the JSON API and the wallets' own endpoints."""


def init_app(app):
    """Register the blueprints (the development wallet's only when it is the wallet in use)."""
    from ..events import sse
    from ..lightning import is_dev_wallet
    from . import api, chat, devpay, refund, webhook, workshop

    app.register_blueprint(workshop.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(refund.bp)
    app.register_blueprint(sse)
    if is_dev_wallet(app):
        app.register_blueprint(devpay.bp)
    if app.config["WALLET"] == "lnbits":
        app.register_blueprint(webhook.bp)

    @app.context_processor
    def dev_refund_invoice():
        # With the development wallet, refund forms come filled in from a stand-in visitor wallet.
        from ..lightning import get_wallet
        return {"dev_visitor_invoice": getattr(get_wallet(), "visitor_invoice", None)}

    @app.context_processor
    def agent_facts():
        from ..agent import get_agent
        agent = get_agent()
        return {"agent_label": agent.label,
                "agent_approximate": getattr(agent, "approximate_count", False)}
