"""The refund form: the visitor pastes an invoice and the Workshop pays what it owes, once."""
from flask import Blueprint, abort, redirect, render_template, request, url_for

from .. import refunds, visitors
from ..security import limit
from .workshop import is_htmx, page_context

bp = Blueprint("refund", __name__)


@bp.post("/jobs/<job_id>/refund")
@limit("PAY_RATE_LIMIT")
def claim(job_id):
    """Claim the job's refund: the refund fragment for htmx, the job's page otherwise."""
    job = visitors.owned_job_or_404(job_id)
    try:
        refunds.claim(job, request.form.get("invoice", ""))
    except refunds.RefundError as error:
        if job.refund is None:
            abort(error.status, str(error))
        if is_htmx():
            return render_template("fragments/refund.html", job=job, refund_error=str(error)), error.status
        return render_template("job_page.html", **page_context(job, refund_error=str(error))), error.status
    if is_htmx():
        return render_template("fragments/refund.html", job=job)
    return redirect(url_for("workshop.job_page", job_id=job.id), 303)
