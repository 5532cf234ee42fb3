"""Visitors are anonymous: a random id in the signed session cookie is who they are."""
import secrets

from flask import abort, request, session

from .models import Job, db


def current(create=True):
    """Return this visitor's id, giving them one if they have none yet."""
    visitor = session.get("visitor")
    if visitor is None and create:
        visitor = session["visitor"] = secrets.token_urlsafe(16)
        session.permanent = True
    return visitor


def assign():
    """Give every visitor an id on their first request (static files aside)."""
    if request.endpoint != "static":
        current()


def owned_job_or_404(job_id):
    """Return the visitor's job; anyone else's job (or none) is a 404, not a 403."""
    job = db.session.get(Job, job_id) if isinstance(job_id, str) and len(job_id) <= 32 else None
    if job is None or job.visitor_id != current(create=False):
        abort(404, "There is no such job for you here.")
    return job


def latest_job():
    """Return the visitor's most recent job, if any."""
    visitor = current(create=False)
    if visitor is None:
        return None
    return Job.query.filter_by(visitor_id=visitor).order_by(Job.created_at.desc()).first()
