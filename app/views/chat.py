"""Free chat with Timmy: short replies, no invoice, no ticker, a few messages a minute."""
from flask import Blueprint, current_app, render_template, request

from .. import jobs, visitors
from ..agent import ProviderError, TextDelta, get_agent
from ..security import limit
from .workshop import is_htmx, page_context

bp = Blueprint("chat", __name__)


@bp.post("/chat")
@limit("CHAT_RATE_LIMIT")
def chat():
    """Answer a free-chat message."""
    try:
        message = jobs.clean_request(request.form.get("message", ""), current_app.config["MAX_CHAT_CHARS"],
                                     what="message")
    except jobs.JobError as error:
        if is_htmx():
            return render_template("fragments/chat_notice.html", message=str(error)), error.status
        return render_template("workshop.html", **page_context(
            visitors.latest_job(), chat_error=str(error))), error.status
    try:
        reply = "".join(item.text for item in get_agent().chat(message) if isinstance(item, TextDelta))
    except ProviderError as error:
        if is_htmx():
            return render_template("fragments/chat_notice.html", message=str(error)), 502
        return render_template("workshop.html", **page_context(
            visitors.latest_job(), chat_error=str(error))), 502
    exchange = {"message": message, "reply": reply}
    if is_htmx():
        # The exchange joins the log; an out-of-band swap empties the input for the next message.
        return (render_template("fragments/chat_exchange.html", **exchange)
                + render_template("fragments/chat_input.html", oob=True,
                                  max_chat_chars=current_app.config["MAX_CHAT_CHARS"]))
    return render_template("workshop.html", **page_context(visitors.latest_job(), chat=[exchange]))
