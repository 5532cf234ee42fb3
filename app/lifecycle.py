"""A worker's start and end: sweep for jobs orphaned by dead processes, stop within Heroku's 30 s.

On SIGTERM gunicorn stops accepting connections and waits for open ones; here, at the same time,
jobs streaming an answer are interrupted and settled at once (charged for what was written, the
rest owed back), evaluations get a few seconds to finish, and every event stream is closed, so the
worker exits in seconds and browsers reconnect to a process that is still up.
"""
import logging

import gevent
from sqlalchemy import update

from . import fanout, jobs, recovery, runner, watcher
from .models import Job, db, utcnow

log = logging.getLogger(__name__)
SETTLE_SECONDS = 8  # for interrupted jobs and running evaluations to write their results
POLL_SECONDS = 0.2


def start(app, alive):
    """Start this worker's sweeps; once alive() turns false, shut its work down. Return that greenlet."""
    # Here, not in create_app: only a serving worker watches (not `flask db upgrade`, not tests).
    stopping = recovery.start(app)
    payments = watcher.start(app)

    def watch():
        while alive():
            gevent.sleep(POLL_SECONDS)
        stopping.set()
        if payments is not None:
            payments.kill(block=False)  # no new wallet calls once the worker is stopping
        shutdown(app)

    return gevent.spawn(watch)


def shutdown(app):
    """Interrupt running jobs (they settle now), hand over unfinished evaluations, close every stream."""
    interrupted = list(runner.active.values())
    log.info("shutting down: interrupting %d running job(s)", len(interrupted))
    for greenlet in interrupted:
        greenlet.kill(runner.Interrupted, block=False)
    gevent.joinall(list(jobs.running.values()), timeout=SETTLE_SECONDS)
    unfinished = list(jobs.running)
    if unfinished:
        # Their leases end now: a process that is still up takes them over at its next sweep.
        with app.app_context():
            db.session.execute(update(Job).where(Job.id.in_(unfinished), recovery.held_by_me())
                               .values(lease_expires_at=utcnow()))
            db.session.commit()
    fanout.disconnect_all()


def finish(greenlet):
    """Wait for the shutdown to end before the worker exits (gunicorn waits only for requests)."""
    if greenlet is not None:
        greenlet.join(SETTLE_SECONDS + 2)
