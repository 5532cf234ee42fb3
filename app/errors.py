"""Errors a visitor understands: JSON for the API, HTML for the pages, never a traceback."""
import logging

import redis
from flask import render_template, request
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from .lightning import WalletError

log = logging.getLogger(__name__)

FRIENDLY = {
    404: "There is nothing here.",
    405: "That address doesn't take that kind of request.",
    413: "That is too long to send at once; shorten it and try again.",
}


def _wants_json():
    return request.path.startswith("/api/")


def respond(status, message):
    """Answer with a message in the form the client asked for."""
    if _wants_json():
        return {"error": message}, status
    if not request.headers.get("HX-Request"):
        return render_template("error.html", message=message, status=status), status
    headers = {}
    if request.headers.get("HX-Target") == "notices":
        # The button swaps nothing on success; its error replaces the notice area instead.
        headers = {"HX-Reswap": "innerHTML"}
    return render_template("fragments/notice.html", message=message, status=status), status, headers


def per_period(limit, noun=""):
    """Say a rate limit the way people do: '3 messages a minute', '10 every 5 minutes'."""
    period = limit.GRANULARITY.name
    noun = f" {noun}" if noun else ""
    if limit.multiples == 1:
        return f"{limit.amount}{noun} an {period}" if period == "hour" else f"{limit.amount}{noun} a {period}"
    return f"{limit.amount}{noun} every {limit.multiples} {period}s"


def handle_http(error):
    if isinstance(error, RateLimitExceeded):
        if request.endpoint == "chat.chat":
            return respond(429, f"Timmy can chat {per_period(error.limit.limit, 'messages')} — that's "
                                "the free allowance. Take a breath and try again in a minute.")
        return respond(429, f"That's more than this allows ({per_period(error.limit.limit)}). "
                            "Wait a moment and try again.")
    if isinstance(error, CSRFError):
        return respond(400, "The form had expired or was sent from elsewhere. Reload the page and try again.")
    message = error.description if error.description and error.description != type(error).description \
        else FRIENDLY.get(error.code, error.name)
    return respond(error.code or 500, message)


def handle_wallet(error):
    return respond(error.status, str(error))


def handle_redis(error):
    log.warning("Redis is unreachable: %s", error)
    return respond(503, "The Workshop's live service is briefly unavailable. Your jobs are safe; "
                        "try again in a moment.")


def handle_unexpected(error):
    log.exception("unhandled error", exc_info=error)
    return respond(500, "Something went wrong on our side. Nothing was charged for this request.")


def init_app(app):
    """Register the handlers."""
    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(WalletError, handle_wallet)
    app.register_error_handler(redis.RedisError, handle_redis)
    app.register_error_handler(InternalServerError, handle_unexpected)
    app.register_error_handler(Exception, handle_unexpected)
