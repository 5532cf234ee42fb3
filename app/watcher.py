"""The payment watcher: a greenlet per worker that asks the wallet about outstanding invoices.

Payments are noticed with no visitor present. Everything it watches is read from the database on
every sweep, so after a restart it resumes where it stopped. Each invoice is asked about after 1 s,
then 2 s, 4 s… up to WATCH_MAX_INTERVAL_SECONDS; an expired one keeps being watched (a payment may
still arrive) for LATE_PAYMENT_WATCH_SECONDS.
"""
import logging
import time
from datetime import timedelta

import gevent
from flask import current_app
from sqlalchemy import select

from . import jobs, refunds
from .models import Invoice, Job, Refund, db, utcnow

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0


class Backoff:
    """When each watched payment is next due: the delay doubles after every unanswered check."""

    def __init__(self, max_seconds):
        self.max_seconds = max_seconds
        self._due = {}  # key -> (monotonic due time, delay)

    def due(self, key, now):
        return self._due.get(key, (now, 0))[0] <= now

    def checked(self, key, now):
        delay = min(max(self._due.get(key, (now, TICK_SECONDS / 2))[1] * 2, TICK_SECONDS), self.max_seconds)
        self._due[key] = (now + delay, delay)

    def forget_except(self, keys):
        for key in set(self._due) - set(keys):
            del self._due[key]


def sweep(backoff, now):
    """Check every due invoice and refund once; expire jobs whose invoice the wallet says is unpaid."""
    config = current_app.config
    horizon = utcnow() - timedelta(seconds=config["LATE_PAYMENT_WATCH_SECONDS"])
    # Plain rows with their job's state, in one query: nothing the checks below change is held.
    invoices = db.session.execute(
        select(Invoice.payment_hash, Invoice.job_id, Invoice.expires_at, Job.state).join(Job)
        .where(Invoice.state == "pending", Invoice.expires_at > horizon)).all()
    refunds_pending = Refund.query.filter(Refund.state == "pending").all()
    backoff.forget_except([i.payment_hash for i in invoices] + [r.job_id for r in refunds_pending])
    for payment_hash, job_id, expires_at, job_state in invoices:
        # An invoice at its expiry is asked about once more before its job expires.
        expiring = expires_at <= utcnow() and job_state in ("awaiting_eval_payment", "awaiting_work_payment")
        if not (expiring or backoff.due(payment_hash, now)):
            continue
        try:
            paid = jobs.on_payment(payment_hash) is not None
        except Exception as error:
            log.warning("watcher: the wallet could not be asked about %s: %s", payment_hash, error)
            db.session.rollback()
            backoff.checked(payment_hash, now)
            continue
        if not paid:
            backoff.checked(payment_hash, now)
            if expiring:
                jobs.expire_if_due(db.session.get(Job, job_id))
    for refund in refunds_pending:
        if backoff.due(refund.job_id, now):
            try:
                refunds.check_pending(refund)
            except Exception as error:
                log.warning("watcher: the wallet could not be asked about refund %s: %s", refund.job_id, error)
                db.session.rollback()
            backoff.checked(refund.job_id, now)


def run(app):
    """Sweep forever, inside the app, with a neutral request context for rendering fragments."""
    backoff = Backoff(app.config["WATCH_MAX_INTERVAL_SECONDS"])
    with jobs.neutral_context(app):
        while True:
            try:
                sweep(backoff, time.monotonic())
            except Exception:
                log.exception("watcher sweep failed")
            finally:
                db.session.remove()
            gevent.sleep(TICK_SECONDS)


def start(app):
    """Start this process's watcher, unless PAYMENT_WATCHER is off; return its greenlet or None."""
    return gevent.spawn(run, app) if app.config["PAYMENT_WATCHER"] else None
