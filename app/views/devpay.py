"""The development wallet's pay endpoint: registered only while the development wallet is in use."""
from flask import Blueprint, abort, jsonify, redirect, url_for

from .. import jobs, visitors
from ..lightning import get_wallet
from ..models import Invoice, db
from ..security import limit, same_origin_only
from .workshop import is_htmx

bp = Blueprint("devpay", __name__)
bp.before_request(same_origin_only)


def _pay(payment_hash):
    """Settle a development-wallet invoice and let the job advance on the wallet's confirmation."""
    get_wallet().settle(payment_hash)  # raises WalletError (404, 410) with a visitor-fit message
    return jobs.on_payment(payment_hash)


@bp.post("/api/dev/pay/<payment_hash>")
@limit("PAY_RATE_LIMIT")
def api_pay(payment_hash):
    """Pay an invoice of the development wallet (JSON)."""
    job = _pay(payment_hash)
    invoice = db.session.get(Invoice, payment_hash)
    body = {"paymentHash": payment_hash, "paid": True}
    # Anyone may pay an invoice, as on Lightning; only the job's owner learns which job it was.
    if job is not None and job.visitor_id == visitors.current(create=False):
        body.update(jobId=job.id, state=job.state, kind=invoice.kind)
    return jsonify(body)


@bp.post("/dev/pay/<payment_hash>")
@limit("PAY_RATE_LIMIT")
def form_pay(payment_hash):
    """Pay from the job's "Pay with development wallet" button."""
    invoice = db.session.get(Invoice, payment_hash)
    if invoice is None or invoice.job.visitor_id != visitors.current(create=False):
        abort(404, "There is no such invoice for you here.")
    job = _pay(payment_hash)
    if is_htmx():
        # The new card arrives over the event stream; this answer only clears old notices.
        return "", 200, {"HX-Reswap": "innerHTML"}
    return redirect(url_for("workshop.job_page", job_id=job.id), 303)
