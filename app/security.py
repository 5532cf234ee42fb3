"""CSRF for forms, an origin check for the JSON API, and rate limits kept in Redis."""
from urllib.parse import unquote_to_bytes, urlsplit

import redis
from flask import abort, current_app, request, session
from flask_limiter import Limiter
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from . import bus

csrf = CSRFProtect()


def visitor_key():
    """Key a limit by visitor (signed session cookie), or by address for a cookieless client."""
    return current_app.config["RATELIMIT_NAMESPACE"] + "visitor:" + (
        session.get("visitor") or f"addr:{request.remote_addr}")


def address_key():
    # A visitor who drops their cookie gets a new identity; the address bounds that.
    return current_app.config["RATELIMIT_NAMESPACE"] + "addr:" + (request.remote_addr or "unknown")


limiter = Limiter(key_func=visitor_key, default_limits=[])


def limit(setting):
    """Return a limit decorator reading its rate from the app's config (per visitor and per address)."""
    def per_visitor():
        return current_app.config[setting]

    def per_address():
        return current_app.config[setting + "_PER_ADDRESS"]

    def decorate(view):
        view = limiter.limit(per_visitor, key_func=visitor_key, deduct_when=_accepted)(view)
        return limiter.limit(per_address, key_func=address_key)(view)
    return decorate


def _accepted(response):
    # A refused request (an empty message, a text too long, a price unavailable, Timmy failing)
    # costs the visitor nothing, allowance included. Every request counts against the looser
    # per-address limit, which bounds a flood of refused ones.
    return response.status_code < 400


def stream_slot(visitor):
    """Take one of the visitor's concurrent event-stream slots; return its release, or None if full."""
    key, client = f"streams:{visitor}", bus.client()
    try:
        with client.pipeline(transaction=True) as pipe:
            count, _ = pipe.incr(key).expire(key, 3600).execute()  # slots of a killed worker expire
    except redis.RedisError:
        # Redis is unreachable: the stream opens uncounted (it waits for Redis, costing nothing).
        return lambda: None
    if count > current_app.config["MAX_STREAMS_PER_VISITOR"]:
        client.decr(key)
        return None
    return lambda: _quietly(client.decr, key)


def _quietly(command, *args):
    try:
        command(*args)
    except redis.RedisError:
        pass  # the slot expires with its key


SECURITY_HEADERS = {
    # Only our own files: no inline scripts or styles anywhere, htmx configured not to eval.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def add_security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def same_origin_only():
    """Refuse a browser's cross-site request to the JSON API (scripts send no Origin header)."""
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        abort(403, "Cross-site requests to the API are not allowed.")


def forms_are_utf8():
    """Refuse a form whose bytes are not UTF-8, before anything reads it."""
    # Werkzeug decodes form fields leniently (dropping or replacing bad bytes), which would
    # turn a stray byte into an empty request or into a U+FFFD the visitor never typed.
    if request.method != "POST" or request.mimetype not in (
            "application/x-www-form-urlencoded", "multipart/form-data"):
        return
    raw = request.get_data(cache=True)  # cached: the form is parsed from these same bytes
    if request.mimetype == "application/x-www-form-urlencoded":
        raw = b"&".join(unquote_to_bytes(part.replace(b"+", b" ")) for part in raw.split(b"&"))
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        abort(400, "The request is not valid UTF-8 text.")


def init_app(app):
    """Protect forms with CSRF tokens and the JSON API with JSON bodies and an origin check."""
    from .views import api, devpay, webhook

    app.before_request(forms_are_utf8)  # first: the CSRF check reads the form

    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # a Workshop tab may stay open for hours
    csrf.init_app(app)
    # The JSON API is for scripts: it takes JSON bodies only (a cross-site form can't send those
    # without a CORS preflight, which this app never grants) and refuses foreign origins.
    csrf.exempt(api.bp)
    csrf.exempt(devpay.api_pay)
    csrf.exempt(webhook.bp)  # the wallet's notices carry no token: they only prompt a re-check
    url = app.config["REDIS_URL"]
    app.config.setdefault("RATELIMIT_STORAGE_URI", url.replace("unix://", "redis+unix://", 1)
                          if url.startswith("unix://") else url)
    # Limits share the bus's pool: a worker's Redis connections stay few however busy it is.
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS",
                          {"connection_pool": app.extensions["redis"].connection_pool})
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    # While Redis is down each worker counts in memory: limits still hold (per worker), and
    # visitors can read their jobs and start new ones instead of meeting a 503.
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    # Every visitor gets their id before any limit is checked, so limits key on it.
    from .visitors import assign
    app.before_request(assign)
    limiter.init_app(app)
    app.after_request(add_security_headers)
    hops = app.config["TRUSTED_PROXY_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
