"""CSRF for forms, an origin check for the JSON API, and rate limits kept in Redis."""
from urllib.parse import urlsplit

from flask import abort, request
from flask_limiter import Limiter
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
# Limits are keyed per visitor by each limit (see the views); storage is the app's Redis.
limiter = Limiter(key_func=lambda: request.remote_addr or "unknown", default_limits=[])


def same_origin_only():
    """Refuse a browser's cross-site request to the JSON API (scripts send no Origin header)."""
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        abort(403, "Cross-site requests to the API are not allowed.")


def init_app(app):
    """Protect forms with CSRF tokens and the JSON API with JSON bodies and an origin check."""
    from .views import api, devpay

    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # a Workshop tab may stay open for hours
    csrf.init_app(app)
    # The JSON API is for scripts: it takes JSON bodies only (a cross-site form can't send those
    # without a CORS preflight, which this app never grants) and refuses foreign origins.
    csrf.exempt(api.bp)
    csrf.exempt(devpay.api_pay)
    url = app.config["REDIS_URL"]
    app.config.setdefault("RATELIMIT_STORAGE_URI", url.replace("unix://", "redis+unix://", 1)
                          if url.startswith("unix://") else url)
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter.init_app(app)
