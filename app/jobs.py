"""The job state machine: a job advances only when the wallet confirms a payment, once per payment."""
import logging
from contextlib import contextmanager
import unicodedata

import gevent
from flask import current_app, g
from sqlalchemy import select, update
from sqlalchemy.orm import joinedload

from . import events, pricing, recovery, refunds, turns
from .agent import ProviderError, get_agent
from .lightning import get_wallet, webhook
from .metering import count_tokens
from .models import Invoice, Job, db, new_id, utcnow

log = logging.getLogger(__name__)
running = {}  # job id -> greenlet, for tests and for stopping


class JobError(Exception):
    """A request the Workshop refuses; the message is fit to show a visitor."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def clean_request(text, limit, what="request"):
    """Return the request (or chat message: what="message") normalised, or raise JobError saying
    what is wrong with it."""
    if not isinstance(text, str):
        raise JobError("Send the job request as text." if what == "request" else f"Send the {what} as text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800" in JSON: no character at all
        raise JobError(f"The {what} is not valid UTF-8 text.") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise JobError("Tell Timmy what the job is: the request is empty." if what == "request"
                       else f"Write something for Timmy first: the {what} is empty.")
    if len(text) > limit:
        raise JobError(f"The {what} is too long: {len(text):,} characters, at most {limit:,}.", 413)
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        raise JobError(f"The {what} contains control characters (such as NUL); remove them and try again.")
    return text


def create_job(visitor_id, request_text):
    """Create a job and its eval invoice in one transaction."""
    text = clean_request(request_text, current_app.config["MAX_REQUEST_CHARS"])
    agent = get_agent()
    # The prompt and the longest answer must fit the model's context, or the job can't be done.
    room = current_app.config["MODEL_CONTEXT_TOKENS"] - current_app.config["MAX_OUTPUT_TOKENS"]
    if count_tokens(agent.prompt(text)) > room:
        raise JobError(f"The request is too long for Timmy's model: at most about {room:,} tokens.", 413)
    # No fresh BTC price means no quote later: refuse now, before the visitor pays anything.
    try:
        pricing.btc_usd_quote()
    except pricing.PriceUnavailable as error:
        raise JobError(f"{error} Nothing was charged; please try again in a few minutes.", 503) from None
    fee_msat = current_app.config["EVAL_FEE_SATS"] * pricing.MSAT_PER_SAT
    # The id is set here, not on insert: the invoice's payment notice names the job.
    job = Job(id=new_id(), visitor_id=visitor_id, request=text, model=agent.model)
    _add_invoice(job, "eval", fee_msat, "Timmy's Workshop: evaluation fee")
    db.session.add(job)
    db.session.commit()
    return job


def _add_invoice(job, kind, amount_msat, memo):
    new = get_wallet().create_invoice(amount_msat, memo, current_app.config["INVOICE_EXPIRY_SECONDS"],
                                      webhook_url=webhook.notify_url(job.id))
    job.invoices.append(Invoice(payment_hash=new.payment_hash, kind=kind, amount_msat=new.amount_msat,
                                payment_request=new.payment_request, expires_at=new.expires_at))


def transition(job, from_state, to_state, where=(), add=(), **values):
    """Move job from one state to the next with a conditional update; tell whether it moved.

    Rows in `add` (and anything else pending in the session) are written only if it moved.
    """
    job_id = job.id  # read before the commit expires it
    moved = db.session.execute(update(Job).where(Job.id == job_id, Job.state == from_state, *where)
                               .values(state=to_state, updated_at=utcnow(), **values)).rowcount == 1
    if moved:
        db.session.add_all(add)
        db.session.commit()
    else:
        db.session.rollback()
    _reload(job_id)
    if moved:
        events.publish_state(job)
    return moved


def _reload(job_id):
    """Load the job afresh with what its card shows (invoices, ledger, refund): one query, not four."""
    db.session.execute(select(Job).where(Job.id == job_id)
                       .options(joinedload(Job.invoices), joinedload(Job.ledger), joinedload(Job.refund))
                       .execution_options(populate_existing=True)).unique().one()


def on_payment(payment_hash):
    """Advance the job whose invoice the wallet confirms paid; a second confirmation changes nothing.

    Every way a payment is noticed (the watcher, a webhook, the development wallet) comes here,
    and only the wallet's own answer counts.
    """
    if not get_wallet().is_paid(payment_hash):
        return None
    # The wallet has answered: the rest is this process's own work, and takes its turn. The
    # wallet's read ends first, so no database connection is held while waiting for the turn.
    db.session.commit()
    with turns.take():
        return _advance(payment_hash)


def _advance(payment_hash):
    first = db.session.execute(update(Invoice).where(Invoice.payment_hash == payment_hash,
                                                     Invoice.state == "pending")
                               .values(state="paid", paid_at=utcnow())).rowcount == 1
    db.session.commit()
    invoice = db.session.get(Invoice, payment_hash)
    if invoice is None or not first:
        return invoice and invoice.job
    job = invoice.job
    waiting, working = (("awaiting_eval_payment", "evaluating") if invoice.kind == "eval"
                        else ("awaiting_work_payment", "executing"))
    # The job is leased to this process in the same update that starts its work; a payment
    # that arrives after the invoice expired still runs the job.
    if (transition(job, waiting, working, **recovery.lease())
            or transition(job, "expired", working, reason=None, **recovery.lease())):
        if invoice.kind == "eval":
            spawn(evaluate, job.id)
        else:
            from .runner import execute
            spawn(execute, job.id)
    else:
        # The job can no longer run: the money is owed back, never kept silently.
        log.warning("job %s: %s invoice paid in state %s; owed back", job.id, invoice.kind, job.state)
        refunds.owe(job, invoice.amount_msat, "late")
        db.session.commit()
        events.publish_state(job)
    return job


def request_stop(job):
    """Ask for the job to be stopped mid-answer; only an executing job can be."""
    if job.state != "executing":
        raise JobError("Timmy isn't working on this job, so there is nothing to stop.", 409)
    events.request_stop(job)


def expire_if_due(job):
    """End a job whose open invoice has expired unpaid."""
    kind = {"awaiting_eval_payment": "eval", "awaiting_work_payment": "work"}.get(job.state)
    invoice = kind and job.invoice(kind)
    if invoice and invoice.state == "pending" and invoice.expires_at <= utcnow():
        transition(job, job.state, "expired", reason="The invoice expired before it was paid.")
    return job


def evaluate(job_id):
    """Have Timmy accept or reject the job; if accepted, quote it and issue the work invoice."""
    with recovery.holding(job_id, "evaluating"):
        _evaluate(db.session.get(Job, job_id))


def _evaluate(job):
    job_id = job.id
    # Only the lease holder may end the evaluation, and ending it ends the lease.
    leased = recovery.as_holder()
    try:
        agent = get_agent()
        verdict = agent.evaluate(job.request)
        if not verdict.accepted:
            transition(job, "evaluating", "rejected", reason=verdict.reason, **leased)
            return
        input_tokens = count_tokens(agent.prompt(job.request))
        btc_usd, btc_usd_source = pricing.btc_usd_quote()
        # Never quote more output than the model may write.
        estimate = min(verdict.estimated_output_tokens, current_app.config["MAX_OUTPUT_TOKENS"])
        quote = pricing.quote(pricing.tariff(), job.model, input_tokens, estimate, btc_usd)
        _add_invoice(job, "work", quote["amountSats"] * pricing.MSAT_PER_SAT, "Timmy's Workshop: the job")
        transition(job, "evaluating", "awaiting_work_payment", reason=verdict.reason,
                   input_tokens=input_tokens, estimated_output_tokens=estimate,
                   btc_usd=btc_usd, btc_usd_source=btc_usd_source, **leased)
    except Exception as error:
        known = isinstance(error, (ProviderError, pricing.PriceUnavailable))  # expected, explained
        if known:
            log.warning("evaluation of job %s failed: %s", job_id, error)
        else:
            log.exception("evaluation of job %s failed", job_id)
        db.session.rollback()
        reason = str(error) if known else "Timmy could not evaluate the request."
        # Owed only if this process is the one that ends the job (transition writes it then).
        refunds.owe(job, job.invoice("eval").amount_msat, "eval_failed")
        transition(job, "evaluating", "failed", error_message=f"{reason} The evaluation fee is owed "
                   "back to you as a refund.", **leased)


@contextmanager
def neutral_context(app):
    """Push a request context that belongs to no visitor, for work done outside any request."""
    # Fragments are rendered with url_for, which needs a request context; no visitor's request
    # is there, so use a neutral one (paths only; no session of anyone's, so no CSRF field).
    with app.test_request_context():
        g.pushing = True
        yield


def spawn(fn, *args):
    """Run fn(job_id, ...) in a greenlet of this process, inside the app."""
    app = current_app._get_current_object()

    def run():
        with neutral_context(app):
            try:
                fn(*args)
            finally:
                db.session.remove()
                if running.get(args[0]) is gevent.getcurrent():
                    del running[args[0]]

    greenlet = gevent.spawn(run)
    running[args[0]] = greenlet
    return greenlet
