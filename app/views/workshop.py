"""The Workshop page, a job's own page, job creation from the form, and a job's event stream."""
from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for

from .. import fragments, jobs, visitors
from ..events import sse
from ..models import db
from ..security import limit, stream_slot

bp = Blueprint("workshop", __name__)


def is_htmx():
    return request.headers.get("HX-Request") == "true"


def page_context(job=None, **extra):
    """Return what the Workshop page needs beyond the job."""
    ctx = {"job": job, "eval_fee_sats": current_app.config["EVAL_FEE_SATS"],
           "max_request_chars": current_app.config["MAX_REQUEST_CHARS"],
           "max_chat_chars": current_app.config["MAX_CHAT_CHARS"], "chat": [], "error": None,
           "request_text": ""}
    if job is not None:
        ctx.update(fragments.job_context(jobs.expire_if_due(job)))
    ctx.update(extra)
    return ctx


@bp.get("/")
def index():
    """Show the Workshop, with the visitor's latest job in the active-job area."""
    return render_template("workshop.html", **page_context(visitors.latest_job()))


@bp.post("/jobs")
@limit("JOB_RATE_LIMIT")
def create_job():
    """Create a job from the form: the job fragment for htmx, a redirect to its page otherwise."""
    text = request.form.get("request", "")
    try:
        job = jobs.create_job(visitors.current(), text)
    except jobs.JobError as error:
        if is_htmx():
            return render_template("fragments/form_error.html", message=str(error)), error.status, {
                "HX-Retarget": "#job-form-error", "HX-Reswap": "outerHTML"}
        return render_template("workshop.html", **page_context(
            visitors.latest_job(), error=str(error), request_text=text)), error.status
    if is_htmx():
        return render_template("fragments/job.html", **fragments.job_context(job)), 201, {
            "HX-Push-Url": url_for("workshop.job_page", job_id=job.id)}
    return redirect(url_for("workshop.job_page", job_id=job.id), 303)


@bp.get("/jobs/<job_id>")
def job_page(job_id):
    """Show one job in its current state, rendered on the server."""
    job = visitors.owned_job_or_404(job_id)
    return render_template("job_page.html", **page_context(job))


@bp.post("/jobs/<job_id>/stop")
@limit("PAY_RATE_LIMIT")
def stop_job(job_id):
    """Stop Timmy mid-answer: the provider is cancelled and only what was written is charged."""
    job = visitors.owned_job_or_404(job_id)
    try:
        jobs.request_stop(job)
    except jobs.JobError as error:
        abort(error.status, str(error))
    if is_htmx():
        return "", 204  # the final panel arrives over the job's event stream
    return redirect(url_for("workshop.job_page", job_id=job.id), 303)


@bp.get("/jobs/<job_id>/events")
def job_events(job_id):
    """Stream the job's events to its owner."""
    job = jobs.expire_if_due(visitors.owned_job_or_404(job_id))
    db.session.rollback()
    release = stream_slot(job.visitor_id)
    if release is None:
        return sse.snapshot_once(job)  # past the cap of live views: the job as it is, every few seconds
    return sse.stream_job(job, on_close=release)
