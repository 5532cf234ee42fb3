"""LNbits payment notices: they only prompt the Workshop to ask the wallet; they prove nothing."""
import logging

from flask import Blueprint, abort, jsonify

from .. import jobs
from ..lightning import webhook
from ..models import Job, db

log = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)


@bp.post("/lightning/lnbits/<job_id>/<token>")
def lnbits_notice(job_id, token):
    """Re-check the job's unpaid invoices with the wallet; the notice's body is never trusted."""
    if len(job_id) > 32 or not webhook.verify(job_id, token):
        abort(404)
    job = db.session.get(Job, job_id)
    if job is None:
        abort(404)
    pending = [i.payment_hash for i in job.invoices if i.state == "pending"]
    try:
        for payment_hash in pending:
            jobs.on_payment(payment_hash)
    except Exception:
        log.exception("payment notice for job %s: the wallet could not be asked", job_id)
        abort(503, "The wallet could not be asked; the watcher will notice the payment.")
    return jsonify({"checked": len(pending)})
