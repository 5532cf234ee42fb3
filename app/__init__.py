"""Timmy's Workshop: pay in sats for jobs done by Timmy, and watch the cost tick live."""
import os
import secrets

import jinja2
from flask import Flask


def _secret_key(app):
    # Sessions are visitors' identities: keep a generated key across restarts of a dev machine.
    path = os.path.join(app.instance_path, "secret_key")
    os.makedirs(app.instance_path, exist_ok=True)
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        return f.read().strip()


def create_app(test_config=None):
    """Create and configure the Workshop."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    app = Flask(__name__, template_folder=os.path.join(root, "templates"),
                static_folder=os.path.join(root, "static"), instance_relative_config=True)
    from . import config
    app.config.from_mapping(config.from_environment())
    if test_config:
        app.config.update(test_config)
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or _secret_key(app)
    # Bodies are read whole before they are checked: cap them near the longest text accepted
    # (escaped JSON or a percent-encoded form takes up to 12 bytes a character), so a huge
    # body is a 413 at once instead of memory spent parsing it.
    # (Flask's defaults hold MAX_CONTENT_LENGTH = None, so setdefault would never set it.)
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = 12 * max(
            app.config["MAX_REQUEST_CHARS"], app.config["MAX_CHAT_CHARS"]) + 16 * 1024
    # A typo in a template is an error, not an empty string on a visitor's screen.
    app.jinja_env.undefined = jinja2.StrictUndefined

    from . import agent, bus, errors, filters, lightning, models, oracle, schema, security, views
    models.init_app(app)
    schema.init_app(app)
    bus.init_app(app)
    agent.init_app(app)
    lightning.init_app(app)
    oracle.init_app(app)
    security.init_app(app)
    filters.init_app(app)
    errors.init_app(app)
    views.init_app(app)
    return app
