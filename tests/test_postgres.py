"""The same job lifecycle on a real PostgreSQL server (TEST_DATABASE_URL), as on Heroku."""
import os

import pytest
from flask import Flask

from app.models import Job, db, database_url
from conftest import reset_postgres, wait_for_jobs

URL = os.environ.get("TEST_DATABASE_URL")
needs_postgres = pytest.mark.skipif(not URL, reason="TEST_DATABASE_URL unset: no PostgreSQL server to test against")


@pytest.fixture
def pg_app(make_app):
    reset_postgres(URL)
    app = make_app(DATABASE_URL=URL)  # migrated to the newest revision as it starts
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    reset_postgres(URL)


def test_heroku_postgres_urls_are_accepted():
    app = Flask(__name__)
    app.config["DATABASE_URL"] = "postgres://u:p@db.example:5432/x"
    assert database_url(app) == "postgresql+psycopg://u:p@db.example:5432/x"


@needs_postgres
def test_a_whole_job_on_postgres_pays_once_and_settles(pg_app):
    client = pg_app.test_client()
    job = client.post("/api/jobs", json={"request": "Explain flux in two paragraphs"}).json
    for _ in range(2):  # the same payment confirmed twice
        assert client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}").status_code == 200
        wait_for_jobs()
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "awaiting_work_payment"
    client.post(f"/api/dev/pay/{job['workInvoice']['paymentHash']}")
    wait_for_jobs()
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "complete"
    ledger = job["costLedger"]
    assert ledger["paidMsat"] == job["workInvoice"]["amountSats"] * 1000
    assert ledger["refundOwedMsat"] == max(0, ledger["paidMsat"] - ledger["actualMsat"]) // 1000 * 1000
    with pg_app.app_context():
        stored = db.session.get(Job, job["jobId"])
        assert len(stored.invoices) == 2 and stored.result == job["result"]
        assert db.engine.dialect.name == "postgresql"
