"""One renewer for all the jobs a process holds: one transaction an interval renews every lease
and saves every checkpoint, a job lost to another process is stopped alone, a job whose work has
ended is renewed no more, and a database error is retried. On SQLite, and on PostgreSQL where
TEST_DATABASE_URL is set."""
import logging
import os
import threading

import gevent
import gevent.event
import pytest
from sqlalchemy import event, update

from app import recovery
from app.models import Job, db, new_id
from conftest import reset_postgres

ANSWER = "Tin the tip before the first joint"
URL = os.environ.get("TEST_DATABASE_URL")


@pytest.fixture(params=["sqlite", "postgres"])
def app(request, make_app):
    if request.param == "postgres" and not URL:
        pytest.skip("TEST_DATABASE_URL unset: no PostgreSQL server to test against")
    database = {}
    if request.param == "postgres":
        reset_postgres(URL)
        database = {"DATABASE_URL": URL}
    # A tiny interval: the tests count renewals, and wait for them, but never time them.
    app = make_app(JOB_CHECKPOINT_SECONDS=0.002, **database)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    if database:
        reset_postgres(URL)


class Holder:
    """A greenlet working on one leased job until released, counting its checkpoints; once its
    work has ended it appends the job's id to order."""

    def __init__(self, app, state="executing", order=None):
        with app.app_context():
            job = Job(id=new_id(), visitor_id="v", request="Plan a soldering workshop", model="m",
                      state=state, **recovery.lease())
            db.session.add(job)
            db.session.commit()
            self.job_id = job.id
        self.checkpoints, self.outcome, self.block = 0, None, None
        self.inside, self.release = gevent.event.Event(), gevent.event.Event()
        self.greenlet = gevent.spawn(self._work, app, state, [] if order is None else order)

    def _work(self, app, state, order):
        with app.app_context():
            try:
                with recovery.holding(self.job_id, state, dict if state == "evaluating" else self.checkpoint):
                    self.inside.set()
                    self.release.wait()
                self.outcome = "ended"
            except recovery.LeaseLost:
                self.outcome = "lost"
            order.append(self.job_id)

    def checkpoint(self):
        self.checkpoints += 1
        if self.block is not None:  # hold the renewal under way here until the test lets it go
            block, self.block = self.block, None
            block.wait()
        return {"result": f"{ANSWER} ({self.checkpoints})", "checkpoint_output_tokens": self.checkpoints}

    def end(self):
        self.release.set()
        self.greenlet.join()
        return self.outcome


def wait_until(predicate):
    # The timeout only stops a test that hangs; nothing is timed.
    with gevent.Timeout(30):
        while not predicate():
            gevent.sleep(0.001)


def renewed_from_now(*holders, times=3):
    """Wait until each holder has been checkpointed `times` more times."""
    start = [holder.checkpoints for holder in holders]
    wait_until(lambda: all(h.checkpoints >= s + times for h, s in zip(holders, start)))


def stored(app, job_id):
    with app.app_context():
        return db.session.get(Job, job_id)


def test_every_job_held_is_renewed_in_one_transaction_an_interval(app):
    holders = [Holder(app) for _ in range(5)] + [Holder(app, "evaluating")]
    for holder in holders:
        holder.inside.wait()
    transactions = []  # the statements of each transaction: (kind, rows of parameters)
    with app.app_context():
        engine = db.engine
    event.listen(engine, "begin", lambda connection: transactions.append([]))
    event.listen(engine, "before_cursor_execute", lambda connection, cursor, statement, parameters, context,
                 many: transactions[-1].append((statement.split()[0], len(parameters) if many else 1)))
    start = holders[0].checkpoints
    renewed_from_now(*holders[:5])
    for holder in holders:
        assert holder.end() == "ended"
    executing = holders[0].checkpoints - start  # each executing job is checkpointed once a renewal
    assert all(holder.checkpoints - start == executing for holder in holders[:5])
    assert len(transactions) == executing
    for statements in transactions:
        # An executemany for the checkpointed jobs, one for the other, and the read of what held.
        assert sorted(statements) == [("SELECT", 1), ("UPDATE", 1), ("UPDATE", 5)]
    for holder in holders[:5]:  # every renewal saved the answer so far
        assert stored(app, holder.job_id).result == f"{ANSWER} ({holder.checkpoints})"


def test_a_job_lost_to_another_process_is_stopped_and_the_others_keep_going(app, caplog):
    holders = [Holder(app) for _ in range(3)]
    renewed_from_now(*holders, times=1)
    lost, kept = holders[1], holders[::2]
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == lost.job_id)
                           .values(lease_owner="elsewhere:1:live", result="theirs"))
        db.session.commit()
    with caplog.at_level(logging.WARNING, logger="app.recovery"):
        lost.greenlet.join()
        assert lost.outcome == "lost"
        checkpoints = lost.checkpoints
        renewed_from_now(*kept)
        assert lost.checkpoints == checkpoints and stored(app, lost.job_id).result == "theirs"
        assert [holder.greenlet.dead for holder in kept] == [False, False]
        assert [holder.end() for holder in kept] == ["ended", "ended"]
    assert [r.getMessage() for r in caplog.records if "taken over" in r.getMessage()] == [
        f"job {lost.job_id} was taken over by another process; leaving it"]
    for holder in kept:
        assert stored(app, holder.job_id).lease_owner == recovery.owner()


def test_a_job_whose_work_has_ended_is_renewed_no_more(app):
    ended, going = Holder(app), Holder(app)
    renewed_from_now(ended, going, times=1)
    assert ended.end() == "ended"
    checkpoints, expires = ended.checkpoints, stored(app, ended.job_id).lease_expires_at
    renewed_from_now(going)
    assert ended.checkpoints == checkpoints and stored(app, ended.job_id).lease_expires_at == expires
    assert going.end() == "ended"


def test_work_that_ends_during_a_renewal_waits_for_it_to_finish(app):
    order = []
    slow, ending = Holder(app), Holder(app, order=order)
    renewed_from_now(slow, ending, times=1)
    proceed = slow.block = gevent.event.Event()
    wait_until(lambda: slow.block is None)  # a renewal is under way, waiting on slow's checkpoint
    with app.app_context():
        event.listen(db.engine, "commit", lambda connection: order.append("commit"))
    ending.release.set()
    gevent.idle()  # everything that can run has run: ending waits for the renewal
    assert not ending.greenlet.dead and order == []
    proceed.set()
    assert ending.end() == "ended"
    assert order[:2] == ["commit", ending.job_id]
    assert stored(app, ending.job_id).result == f"{ANSWER} ({ending.checkpoints})"
    assert slow.end() == "ended"


def test_a_database_error_leaves_every_lease_to_the_next_interval(app, caplog):
    holders = [Holder(app) for _ in range(2)]
    renewed_from_now(*holders, times=1)
    with app.app_context():
        engine = db.engine
    failures = []

    def fail_once(connection, cursor, statement, parameters, context, many):
        if statement.startswith("UPDATE") and not failures:
            failures.append(statement)
            raise engine.dialect.loaded_dbapi.OperationalError("the database went away")

    event.listen(engine, "before_cursor_execute", fail_once)
    with caplog.at_level(logging.WARNING, logger="app.recovery"):
        wait_until(lambda: failures)
        renewed_from_now(*holders)
    assert "could not renew the leases of 2 job(s); retrying" in caplog.text
    assert [holder.end() for holder in holders] == ["ended", "ended"]
    for holder in holders:
        job = stored(app, holder.job_id)
        assert job.lease_owner == recovery.owner() and job.result == f"{ANSWER} ({holder.checkpoints})"


def test_each_os_thread_renews_the_jobs_held_on_its_own_gevent_hub(app):
    here, there = Holder(app), {}

    def elsewhere():  # a thread of its own runs a gevent hub of its own
        holder = Holder(app)
        renewed_from_now(holder)
        there["outcome"], there["hub"] = holder.end(), id(gevent.get_hub())

    thread = threading.Thread(target=elsewhere)
    thread.start()
    while thread.is_alive():
        renewed_from_now(here, times=1)  # this hub's jobs are renewed meanwhile too
    assert there["outcome"] == "ended" and here.end() == "ended"
    assert set(app.extensions["lease_renewers"]) == {id(gevent.get_hub()), there["hub"]}
