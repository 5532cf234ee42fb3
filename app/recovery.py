"""Leases on running jobs, and the sweep that ends honestly the jobs whose process died.

A process that starts evaluating or executing a job leases it (lease_owner, lease_expires_at)
and renews the lease while it works; an executing job's renewal also checkpoints its answer so
far (a process renews its executing jobs together: app/renewals.py). Any process can tell a
busy job from an orphaned one by the lease alone: only a lease left to lapse (its process was
killed, or lost the database for longer than a lease) is swept. An
orphaned evaluation is evaluated again (its fee is paid and nothing was quoted yet); an orphaned
execution fails, charged for the answer as last checkpointed, the rest owed back as a refund.
"""
import functools
import logging
import os
import secrets
import socket
from contextlib import contextmanager
from datetime import timedelta

import gevent
import gevent.event
from flask import current_app
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from . import renewals
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


@functools.lru_cache(maxsize=None)
def _renewal(columns):
    """Return the UPDATE that renews a lease and writes the given checkpoint columns."""
    # Built once, with bound parameters: hundreds of jobs renew every few seconds, and building
    # and keying a new statement each time cost more than the database's own work.
    return (update(Job)
            .where(Job.id == bindparam("b_id"), Job.state == bindparam("b_state"),
                   Job.lease_owner == bindparam("b_lease_owner"))
            .values({name: bindparam(f"b_{name}") for name in ("lease_owner", "lease_expires_at") + columns}))


def _renewal_params(job_id, state, checkpoint):
    params = {f"b_{name}": value for name, value in {**lease(), **checkpoint}.items()}
    params.update(b_id=job_id, b_state=state)
    return params


def renew(job_id, state, **checkpoint):
    """Extend this process's lease on a job (saving any checkpoint with it); tell whether it held."""
    # Its own connection, not the session: the greenlet working on the job uses the session.
    with db.engine.begin() as connection:
        return connection.execute(_renewal(tuple(checkpoint)),
                                  _renewal_params(job_id, state, checkpoint)).rowcount == 1


def renew_many(leases):
    """Extend this process's leases on (job id, state, checkpoint) in one transaction, saving each
    checkpoint; return the ids of the jobs whose lease it no longer held."""
    groups = {}  # one statement per set of checkpoint columns, executed for each of its jobs
    for job_id, state, checkpoint in leases:
        groups.setdefault(tuple(checkpoint), []).append(_renewal_params(job_id, state, checkpoint))
    with db.engine.begin() as connection:
        for columns, params in groups.items():
            connection.execute(_renewal(columns), params)
        held = {(job_id, state) for job_id, state in connection.execute(select(Job.id, Job.state).where(
            Job.id.in_([job_id for job_id, _, _ in leases]), held_by_me()))}
    return [job_id for job_id, state, _ in leases if (job_id, state) not in held]


def keep(job_id, state, worker, done):
    """Renew the lease every checkpoint interval until done is set; stop worker if it was lost."""
    interval = min(current_app.config["JOB_CHECKPOINT_SECONDS"], current_app.config["JOB_LEASE_SECONDS"] / 3)
    while not done.wait(interval):
        try:
            held = renew(job_id, state)
        except SQLAlchemyError:
            log.warning("job %s: could not renew its lease; retrying", job_id, exc_info=True)
            continue
        if not held:
            log.warning("job %s was taken over by another process; leaving it", job_id)
            worker.kill(LeaseLost, block=False)
            return


@contextmanager
def holding(job_id, state, checkpoint=None):
    """Keep this process's lease on the job (and save checkpoint() with it) while the body runs."""
    app, worker = current_app._get_current_object(), gevent.getcurrent()
    if checkpoint is not None:  # an executing job: renewed together with the process's others
        renewer = renewals.renewer()
        renewer.join(job_id, state, worker, checkpoint)
        try:
            yield
        finally:
            renewer.leave(job_id)  # a renewal under way finishes; none starts after the work has ended
        return
    done = gevent.event.Event()

    def run():
        with app.app_context():
            keep(job_id, state, worker, done)

    keeper = gevent.spawn(run)
    try:
        yield
    finally:
        done.set()
        keeper.join()  # a renewal under way finishes; none starts after the work has ended


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
