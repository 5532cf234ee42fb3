"""One process's lease renewals for its executing jobs: those due, together, in one transaction.

Each executing job renewing its own lease every checkpoint interval (a greenlet, a connection, a
transaction and an UPDATE each time) cost 9% of the worker's CPU with 200 jobs streaming. Here
one greenlet per process looks a few times a second for the jobs due and renews them all with
one statement executed for each, in one transaction, then finds any lease it lost with one query.

Only executing jobs are renewed here: their greenlets hold no database connection while they
stream, so one that waits in leave() for a batch under way can't starve that batch of a
connection. An evaluation holds its row through the model's call; it keeps a renewing greenlet
of its own (recovery.keep).
"""
import logging
import os
import time

import gevent
import gevent.event
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25  # how often the due leases are looked for: jobs that start together renew together


class Held:
    __slots__ = ("state", "worker", "checkpoint", "due")

    def __init__(self, state, worker, checkpoint, due):
        self.state, self.worker, self.checkpoint, self.due = state, worker, checkpoint, due


class Renewer:
    """The leases of one process's (and gevent hub's) executing jobs."""

    def __init__(self, app):
        self.app = app
        self.interval = min(app.config["JOB_CHECKPOINT_SECONDS"], app.config["JOB_LEASE_SECONDS"] / 3)
        self.held = {}  # job id -> Held
        self.in_flight = set()  # the jobs of the batch under way
        self.idle = gevent.event.Event()  # no batch is under way
        self.idle.set()
        self.greenlet = None

    def join(self, job_id, state, worker, checkpoint):
        """Renew the job's lease, saving checkpoint(), every interval; kill worker if it is lost."""
        self.held[job_id] = Held(state, worker, checkpoint, time.monotonic() + self.interval)
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)

    def leave(self, job_id):
        """Renew the job no more, once a renewal of it under way has ended."""
        self.held.pop(job_id, None)
        while job_id in self.in_flight:
            self.idle.wait()

    def _run(self):
        try:
            with self.app.app_context():
                while self.held:
                    gevent.sleep(TICK_SECONDS)
                    now = time.monotonic()
                    due = [(job_id, held) for job_id, held in self.held.items() if held.due <= now]
                    if not due:
                        continue
                    for _, held in due:
                        held.due = now + self.interval  # renewed or not, next tried then
                    try:
                        self._renew(due)
                    except Exception:  # a fault in one batch must not end every job's renewals
                        log.exception("renewing %d leases failed; trying again", len(due))
        finally:
            self.greenlet = None

    def _renew(self, due):
        from .recovery import LeaseLost, renew_many
        self.in_flight = {job_id for job_id, _ in due}
        self.idle.clear()
        try:
            lost = renew_many([(job_id, held.state, held.checkpoint()) for job_id, held in due])
        except SQLAlchemyError:
            log.warning("could not renew %d leases; retrying", len(due), exc_info=True)
            return  # tried again an interval later, as a job's own renewals were
        finally:
            self.in_flight = set()
            self.idle.set()
        for job_id in lost:
            held = self.held.pop(job_id, None)
            if held is not None:
                log.warning("job %s was taken over by another process; leaving it", job_id)
                held.worker.kill(LeaseLost, block=False)


def renewer():
    """Return this process's (app's and gevent hub's) renewer."""
    renewers = current_app.extensions.setdefault("renewers", {})
    key = (os.getpid(), id(gevent.get_hub()))
    if key not in renewers:
        renewers[key] = Renewer(current_app._get_current_object())
    return renewers[key]
