"""Leases on running jobs, and the sweep that ends honestly the jobs whose process died.

A process that starts evaluating or executing a job leases it (lease_owner, lease_expires_at)
and renews the lease while it works, all its jobs' leases together in one transaction an interval;
an executing job's renewal also checkpoints its answer so far. Any process can tell a busy job
from an orphaned one by the lease alone: only a lease left to lapse (its process was killed, or
lost the database for longer than a lease) is swept. An orphaned evaluation is evaluated again
(its fee is paid and nothing was quoted yet); an orphaned execution fails, charged for the answer
as last checkpointed, the rest owed back as a refund.
"""
import logging
import os
import secrets
import socket
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import gevent
import gevent.event
import gevent.lock
from flask import current_app
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from .models import Job, db, utcnow

log = logging.getLogger(__name__)
LEASED_STATES = ("evaluating", "executing")
_owner = {}


class LeaseLost(gevent.GreenletExit):
    """Another process swept this job: stop working on it, and settle nothing."""


def owner():
    """Return this process's name as a lease holder (a forked child gets a new one)."""
    pid = os.getpid()
    if pid not in _owner:
        _owner[pid] = f"{socket.gethostname()[:60]}:{pid}:{secrets.token_hex(4)}"
    return _owner[pid]


def lease(seconds=None):
    """Return the column values that lease a job to this process from now on."""
    seconds = current_app.config["JOB_LEASE_SECONDS"] if seconds is None else seconds
    return {"lease_owner": owner(), "lease_expires_at": utcnow() + timedelta(seconds=seconds)}


def held_by_me():
    """Return the condition that this process holds the job's lease."""
    return Job.lease_owner == owner()


def renew(job_id, state, **checkpoint):
    """Extend this process's lease on a job (saving any checkpoint with it); tell whether it held."""
    return (job_id, state) in renew_all([(job_id, state, checkpoint)])


def renew_all(leases):
    """Extend this process's leases on (job id, state, checkpoint)s together; return the (id, state)s held."""
    values, rows = lease(), defaultdict(list)
    for job_id, state, checkpoint in leases:  # one executemany for each set of checkpointed columns
        rows[tuple(sorted(checkpoint))].append({"job_id": job_id, "job_state": state, **checkpoint})
    renewal = update(Job).where(Job.id == bindparam("job_id"), Job.state == bindparam("job_state"),
                                held_by_me()).values(**values)
    # Its own connection, not the session: the greenlets working on the jobs use the session.
    with db.engine.begin() as connection:
        for group in rows.values():
            connection.execute(renewal, group)
        # The rows the updates matched stay locked until the commit: this reads what they wrote.
        held = select(Job.id, Job.state).where(Job.id.in_([job_id for job_id, _, _ in leases]), held_by_me())
        return {(job_id, state) for job_id, state in connection.execute(held)}


@dataclass(eq=False)  # by identity: two holds of one job are two holds
class Hold:
    """A job this process works on: its state, the greenlet working on it, and what to checkpoint."""
    job_id: str
    state: str
    worker: gevent.Greenlet
    checkpoint: Callable[[], dict]


class Renewer:
    """Renew the leases of all the jobs held on one gevent hub together, in one transaction an interval.

    A greenlet for each job, renewing its lease in a transaction of its own, cost a worker streaming
    a few hundred jobs a tenth of its CPU.
    """

    def __init__(self, app):
        self.app, self.holds, self.greenlet = app, set(), None
        self.renewing = gevent.lock.Semaphore()  # held through a renewal and the kills it makes

    def add(self, hold):
        """Renew the hold's lease from the next interval on."""
        self.holds.add(hold)
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)

    def remove(self, hold):
        """Renew the hold's lease no more, once a renewal under way has finished."""
        self.holds.discard(hold)
        with self.renewing:  # a lease lost in that renewal is LeaseLost here, in the holder
            pass

    def _run(self):
        config = self.app.config
        try:
            while self.holds:
                gevent.sleep(min(config["JOB_CHECKPOINT_SECONDS"], config["JOB_LEASE_SECONDS"] / 3))
                with self.renewing, self.app.app_context():
                    self._renew(list(self.holds))
        finally:
            self.greenlet = None

    def _renew(self, holds):
        if not holds:
            return
        try:
            held = renew_all([(hold.job_id, hold.state, _checkpoint(hold)) for hold in holds])
        except SQLAlchemyError:
            log.warning("could not renew the leases of %d job(s); retrying", len(holds), exc_info=True)
            return
        for hold in holds:
            if (hold.job_id, hold.state) not in held:
                log.warning("job %s was taken over by another process; leaving it", hold.job_id)
                self.holds.discard(hold)
                hold.worker.kill(LeaseLost, block=False)


def _checkpoint(hold):
    try:
        return hold.checkpoint()
    except Exception:  # one job's failing checkpoint must not cost every job its lease
        log.exception("job %s: could not checkpoint it; renewing its lease without", hold.job_id)
        return {}


def _renewer():
    # One per app and per gevent hub (OS thread): its greenlet kills workers of that hub.
    renewers = current_app.extensions.setdefault("lease_renewers", {})
    key = id(gevent.get_hub())
    if key not in renewers:
        renewers[key] = Renewer(current_app._get_current_object())
    return renewers[key]


@contextmanager
def holding(job_id, state, checkpoint=dict):
    """Keep this process's lease on the job (and checkpoint it) while the body runs."""
    hold, renewer = Hold(job_id, state, gevent.getcurrent(), checkpoint), _renewer()
    renewer.add(hold)
    try:
        yield
    finally:
        renewer.remove(hold)  # a renewal under way finishes; none starts after the work has ended


def released():
    """Return the column values that end a job's lease (it reached its next state)."""
    return {"lease_owner": None, "lease_expires_at": None}


def as_holder(*add):
    """Return the transition() arguments that let only this lease holder end a job, writing add."""
    return {"where": (held_by_me(),), "add": add, **released()}


def sweep():
    """End or restart every job whose lease has lapsed; return the ids of the jobs taken over."""
    now = utcnow()
    lapsed = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    found = db.session.execute(select(Job.id, Job.state).where(Job.state.in_(LEASED_STATES), lapsed)).all()
    db.session.rollback()
    taken = []
    for job_id, state in found:
        # One conditional update claims it: of several processes sweeping at once, one wins.
        claimed = db.session.execute(update(Job).where(Job.id == job_id, Job.state == state, lapsed)
                                     .values(**lease())).rowcount == 1
        db.session.commit()
        if not claimed:
            continue
        taken.append(job_id)
        log.warning("job %s was %s in a process that died; recovering it", job_id, state)
        from . import jobs, runner
        if state == "evaluating":
            jobs.spawn(jobs.evaluate, job_id)
        else:
            runner.settle_from_checkpoint(db.session.get(Job, job_id))
    # Invoices still outstanding (awaiting_*_payment) are the payment watcher's (app/watcher.py).
    return taken


def watch(app, stopping):
    """Sweep at start-up and every half lease, until stopping is set."""
    from .jobs import neutral_context  # jobs leases through this module
    interval = app.config["JOB_LEASE_SECONDS"] / 2
    while not stopping.is_set():
        try:
            with neutral_context(app):
                sweep()
        except Exception:
            log.exception("sweeping for orphaned jobs failed; trying again")
        stopping.wait(interval)


def start(app):
    """Start this process's sweeper; return the event that stops it."""
    stopping = gevent.event.Event()
    gevent.spawn(watch, app, stopping)
    return stopping
