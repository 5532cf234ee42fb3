"""Leases on running jobs: a lapsed one is swept once, a live one never, and a process that lost
its lease settles nothing."""
from datetime import timedelta

import pytest

from app import jobs, recovery, runner
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
