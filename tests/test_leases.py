"""Leases on running jobs: a lapsed one is swept once, a live one never, and a process that lost
its lease settles nothing."""
from datetime import timedelta

import pytest

from app import jobs, recovery, renewals, runner
from app.agent import Usage
from app.metering import count_tokens
from app.models import CostLedger, Job, db, utcnow
from conftest import assert_settled, wait_for_jobs

ANSWER = "Half of a careful answer about soldering irons"


@pytest.fixture
def paid(client):
    """A job whose work invoice is paid, left at awaiting_work_payment for the test to place."""
    job = client.post("/api/jobs", json={"request": "Plan a soldering workshop"}).json
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    return client.get(f"/api/jobs/{job['jobId']}").json


def place(app, job_id, state, owner, expires_in, **values):
    with app.app_context():
        job = db.session.get(Job, job_id)
        job.state, job.lease_owner = state, owner
        job.lease_expires_at = utcnow() + timedelta(seconds=expires_in)
        for name, value in values.items():
            setattr(job, name, value)
        for invoice in job.invoices:
            invoice.state = "paid"
        db.session.commit()


def test_a_lapsed_lease_is_swept_once_and_a_live_one_is_left_alone(app, client, paid):
    place(app, paid["jobId"], "executing", "elsewhere:1:live", 60, result=ANSWER,
          checkpoint_output_tokens=count_tokens(ANSWER))
    with app.test_request_context():
        assert recovery.sweep() == []  # busy in another process: not ours to touch
    place(app, paid["jobId"], "executing", "elsewhere:1:dead", -1)
    with app.test_request_context():
        assert recovery.sweep() == [paid["jobId"]]
        assert recovery.sweep() == []  # ended once
    job = client.get(f"/api/jobs/{paid['jobId']}").json
    assert job["state"] == "failed" and job["result"] == ANSWER
    assert job["costLedger"]["usageSource"] == "checkpoint"
    assert job["costLedger"]["outputTokens"] == count_tokens(ANSWER)
    assert job["costLedger"]["inputTokens"] == paid["pricingBreakdown"]["inputTokens"]
    assert_settled(app, job)
    with app.app_context():
        assert db.session.get(Job, paid["jobId"]).lease_owner is None


def test_a_process_that_lost_its_lease_settles_nothing(app, paid):
    place(app, paid["jobId"], "executing", "someone-else", 60)
    with app.test_request_context():
        job = db.session.get(Job, paid["jobId"])
        assert not recovery.renew(job.id, "executing")
        assert not runner.settle(job, ANSWER, Usage(10, 10), "provider")
        assert db.session.get(CostLedger, job.id) is None and job.state == "executing"


def test_an_orphaned_evaluation_is_evaluated_again(app, client):
    job = client.post("/api/jobs", json={"request": "Plan a soldering workshop"}).json
    with app.app_context():
        db.session.get(Job, job["jobId"]).invoices[0].state = "paid"
        db.session.commit()
    place(app, job["jobId"], "evaluating", "elsewhere:2:dead", -1)
    with app.test_request_context():
        assert recovery.sweep() == [job["jobId"]]
    wait_for_jobs()
    again = client.get(f"/api/jobs/{job['jobId']}").json
    assert again["state"] == "awaiting_work_payment" and again["workInvoice"]["amountSats"] > 0
    with app.app_context():
        stored = db.session.get(Job, job["jobId"])
        assert len(stored.invoices) == 2 and stored.lease_owner is None


def test_paying_leases_the_job_to_this_process_until_it_ends(app, client, paid):
    client.post(f"/api/dev/pay/{paid['workInvoice']['paymentHash']}")
    with app.app_context():
        job = db.session.get(Job, paid["jobId"])
        assert job.state == "executing" and job.lease_owner == recovery.owner()
        assert jobs.running  # its greenlet waits its turn
    wait_for_jobs()
    job = client.get(f"/api/jobs/{paid['jobId']}").json
    assert job["state"] == "complete"
    assert_settled(app, job)
    with app.app_context():
        assert db.session.get(Job, paid["jobId"]).lease_expires_at is None


# Executing jobs' leases are renewed together (app/renewals.py)

@pytest.fixture
def executing(make_app):
    """An app renewing every 0.2 s, and three of its jobs executing under this process's lease."""
    app = make_app(JOB_CHECKPOINT_SECONDS=0.2)
    client = app.test_client()
    ids = []
    for _ in range(3):
        job = client.post("/api/jobs", json={"request": "Plan a soldering workshop"}).json
        client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
        wait_for_jobs()
        with app.app_context():
            place(app, job["jobId"], "executing", recovery.owner(), 30)
        ids.append(job["jobId"])
    yield app, ids
    with app.app_context():
        db.engine.dispose()


def test_executing_jobs_renew_their_leases_together_with_their_checkpoints(executing):
    import gevent
    from sqlalchemy import event
    app, ids = executing
    statements = []
    with app.app_context():
        before = {job_id: db.session.get(Job, job_id).lease_expires_at for job_id in ids}
        db.session.remove()
        event.listen(db.engine, "before_cursor_execute",
                     lambda conn, cursor, sql, params, context, many: statements.append((sql.split()[0], many)))
        renewer = renewals.renewer()
        workers = [gevent.spawn(gevent.sleep, 10) for _ in ids]
        for n, (job_id, worker) in enumerate(zip(ids, workers)):
            renewer.join(job_id, "executing", worker, lambda n=n: {"result": f"answer {n}",
                                                                    "checkpoint_output_tokens": n})
        gevent.sleep(0.6)  # two renewals or so
        for job_id in ids:
            renewer.leave(job_id)
        renewed = list(statements)
        stored = {job_id: db.session.get(Job, job_id) for job_id in ids}
        assert [stored[job_id].result for job_id in ids] == ["answer 0", "answer 1", "answer 2"]
        assert [stored[job_id].checkpoint_output_tokens for job_id in ids] == [0, 1, 2]
        assert all(stored[job_id].lease_expires_at > before[job_id] for job_id in ids)
        assert not any(worker.dead for worker in workers)
        gevent.killall(workers)
    # Each round: one UPDATE executed for all three jobs, and one query for the leases still held.
    updates = [many for kind, many in renewed if kind == "UPDATE"]
    assert updates and all(updates), renewed
    assert len([kind for kind, _ in renewed if kind == "SELECT"]) == len(updates), renewed


def test_a_lease_taken_over_stops_its_job_and_no_other(executing):
    import gevent
    app, ids = executing
    with app.app_context():
        renewer = renewals.renewer()
        workers = [gevent.spawn(gevent.sleep, 10) for _ in ids]
        for job_id, worker in zip(ids, workers):
            renewer.join(job_id, "executing", worker, lambda: {"result": "so far"})
        place(app, ids[1], "executing", "someone-else", 60)  # another process swept it
        gevent.sleep(0.6)
        assert workers[1].dead and isinstance(workers[1].value, recovery.LeaseLost)
        assert not workers[0].dead and not workers[2].dead
        for job_id in ids:
            renewer.leave(job_id)
        db.session.remove()
        assert db.session.get(Job, ids[1]).lease_owner == "someone-else"
        assert db.session.get(Job, ids[1]).result != "so far"
        gevent.killall(workers)


def test_leaving_waits_for_a_renewal_under_way(executing, monkeypatch):
    import gevent
    import gevent.event
    app, ids = executing
    started, release, order = gevent.event.Event(), gevent.event.Event(), []
    renew_many = recovery.renew_many

    def slow_renew_many(leases):
        started.set()
        release.wait()
        order.append("renewed")
        return renew_many(leases)

    monkeypatch.setattr(recovery, "renew_many", slow_renew_many)
    with app.app_context():
        renewer = renewals.renewer()
        renewer.join(ids[0], "executing", gevent.getcurrent(), dict)
        assert started.wait(2)
        leaving = gevent.spawn(lambda: (renewer.leave(ids[0]), order.append("left")))
        gevent.sleep(0.1)
        assert order == []  # still waiting for the batch that holds its job
        release.set()
        leaving.join(2)
        assert order == ["renewed", "left"]


def test_a_renewal_batch_that_fails_unexpectedly_leaves_the_renewals_going(executing, monkeypatch):
    import gevent
    app, ids = executing
    calls, renew_many = [], recovery.renew_many

    def flaky(leases):
        calls.append(len(leases))
        if len(calls) == 1:
            raise RuntimeError("a bug in one batch")
        return renew_many(leases)

    monkeypatch.setattr(recovery, "renew_many", flaky)
    with app.app_context():
        renewer = renewals.renewer()
        worker = gevent.spawn(gevent.sleep, 10)
        renewer.join(ids[0], "executing", worker, lambda: {"result": "still going"})
        gevent.sleep(0.8)  # the first batch fails; the next ones renew
        renewer.leave(ids[0])
        assert len(calls) >= 2 and not worker.dead
        db.session.remove()
        assert db.session.get(Job, ids[0]).result == "still going"
        worker.kill()
