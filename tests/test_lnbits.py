"""The Workshop on a real LNbits: invoices paid from a second LNbits wallet, notices, late payments, refunds."""
import time
from datetime import timedelta
from decimal import Decimal

import bolt11
import pytest
import requests
from flask import g

from app import jobs, watcher
from app.lightning import webhook
from app.lightning.dev import DevWallet
from app.models import Invoice, db, utcnow

from conftest import LiveServer, wait_for_jobs

pytestmark = pytest.mark.integration
REQUEST = "Explain how Lightning invoices expire, with an example"


@pytest.fixture
def wallets(lnbits):
    """A fresh shop wallet for the Workshop and a funded visitor's wallet, on the same LNbits."""
    return lnbits.create_wallet("workshop"), lnbits.create_wallet("visitor", fund_sats=1_000_000)


def lnbits_config(lnbits, shop, **extra):
    return {"WALLET": "lnbits", "LNBITS_URL": lnbits.url, "LNBITS_INVOICE_KEY": shop["inkey"],
            "LNBITS_ADMIN_KEY": shop["adminkey"], **extra}


def sweep(app, backoff=None):
    """Run one watcher sweep in the app, as the watcher greenlet does."""
    with app.test_request_context():
        g.pushing = True
        watcher.sweep(backoff or watcher.Backoff(30), time.monotonic())
        db.session.remove()
    wait_for_jobs()


def poll(session, url, until, timeout=60):
    for _ in range(int(timeout / 0.25)):
        job = session.get(url).json()
        if until(job):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job stuck in {job['state']}")


def test_a_whole_job_paid_from_another_lnbits_wallet_is_noticed_by_the_watcher(lnbits, wallets, tmp_path, redis_url):
    shop, visitor = wallets
    # Cheap BTC makes the work invoice large enough that the actual cost leaves a refund.
    server = LiveServer(tmp_path, redis_url, **{k: str(v) for k, v in lnbits_config(lnbits, shop).items()},
                        BTC_USD="100").start()
    try:
        session = requests.Session()
        job = session.post(f"{server.url}/api/jobs", json={"request": REQUEST}).json()
        eval_invoice = bolt11.decode(job["evalInvoice"]["paymentRequest"])
        assert eval_invoice.currency == "bc" and eval_invoice.amount_msat == 10_000
        assert session.post(f"{server.url}/api/dev/pay/{job['evalInvoice']['paymentHash']}").status_code == 404
        url = f"{server.url}/api/jobs/{job['jobId']}"

        lnbits.pay(visitor, job["evalInvoice"]["paymentRequest"])
        job = poll(session, url, lambda j: j["state"] not in ("awaiting_eval_payment", "evaluating"))
        assert job["state"] == "awaiting_work_payment"
        lnbits.pay(visitor, job["workInvoice"]["paymentRequest"])
        job = poll(session, url, lambda j: j["state"] in ("complete", "failed"))
        assert job["state"] == "complete" and job["result"]

        paid_msat = 10_000 + job["workInvoice"]["amountSats"] * 1000
        assert lnbits.balance_msat(shop) == paid_msat
        assert lnbits.balance_msat(visitor) == 1_000_000_000 - paid_msat
        assert job["refundState"] == "owed"
        assert job["refundAmountSats"] == job["costLedger"]["refundOwedSats"] > 0
    finally:
        server.stop()


def test_a_payment_notice_is_rechecked_and_a_duplicate_changes_nothing(lnbits, wallets, make_app):
    shop, visitor = wallets
    app = make_app(**lnbits_config(lnbits, shop, LNBITS_WEBHOOK_BASE_URL="http://127.0.0.1:9"))
    client = app.test_client()
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    with app.test_request_context():
        notice = webhook.notify_url(job["jobId"]).removeprefix("http://127.0.0.1:9")
    assert client.post(notice.rsplit("/", 1)[0] + "/" + "0" * 64).status_code == 404  # wrong token
    # A notice before any payment: the wallet says unpaid, so nothing moves.
    assert client.post(notice).status_code == 200
    assert client.get(f"/api/jobs/{job['jobId']}").json["state"] == "awaiting_eval_payment"

    lnbits.pay(visitor, job["evalInvoice"]["paymentRequest"])
    for _ in range(3):  # the notice, LNbits retrying it, and the watcher: one advance
        assert client.post(notice).status_code == 200
        wait_for_jobs()
    sweep(app)
    with app.test_request_context():
        jobs.on_payment(job["evalInvoice"]["paymentHash"])
    wait_for_jobs()
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "awaiting_work_payment"
    with app.app_context():
        assert Invoice.query.filter_by(job_id=job["jobId"]).count() == 2  # one work invoice, not three
    assert lnbits.balance_msat(shop) == 10_000


def test_a_payment_that_arrives_after_expiry_still_runs_the_job(lnbits, wallets, make_app):
    shop, visitor = wallets
    app = make_app(**lnbits_config(lnbits, shop))
    client = app.test_client()
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    # The Workshop's clock passes the invoice's expiry while the payment is still on its way.
    with app.app_context():
        invoice = db.session.get(Invoice, job["evalInvoice"]["paymentHash"])
        invoice.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    sweep(app)
    assert client.get(f"/api/jobs/{job['jobId']}").json["state"] == "expired"

    lnbits.pay(visitor, job["evalInvoice"]["paymentRequest"])
    sweep(app)
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "awaiting_work_payment" and job["refundState"] == "none"
    assert lnbits.balance_msat(shop) == 10_000


def completed_job_with_refund(app, lnbits, visitor):
    client = app.test_client()
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    lnbits.pay(visitor, job["evalInvoice"]["paymentRequest"])
    sweep(app)
    job = client.get(f"/api/jobs/{job['jobId']}").json
    lnbits.pay(visitor, job["workInvoice"]["paymentRequest"])
    sweep(app)
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "complete" and job["refundState"] == "owed" and job["refundAmountSats"] > 0
    return client, job


def test_a_refund_is_paid_into_the_visitors_lnbits_wallet_once(lnbits, wallets, make_app):
    shop, visitor = wallets
    app = make_app(**lnbits_config(lnbits, shop), BTC_USD=Decimal("100"))
    client, job = completed_job_with_refund(app, lnbits, visitor)
    owed = job["refundAmountSats"]
    shop_before, visitor_before = lnbits.balance_msat(shop), lnbits.balance_msat(visitor)

    invoice = lnbits.invoice(visitor, owed)
    response = client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": invoice})
    assert response.status_code == 200, response.json
    assert response.json["refundState"] == "paid"
    assert response.json["refundPaymentHash"] == bolt11.decode(invoice).payment_hash
    assert lnbits.balance_msat(shop) == shop_before - owed * 1000
    assert lnbits.balance_msat(visitor) == visitor_before + owed * 1000

    again = client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": lnbits.invoice(visitor, owed)})
    assert again.status_code == 409
    assert again.json["refundPaymentHash"] == response.json["refundPaymentHash"]
    assert lnbits.balance_msat(visitor) == visitor_before + owed * 1000
    state = client.get(f"/api/jobs/{job['jobId']}").json
    assert (state["refundState"], state["refundAmountSats"], state["refundPaymentHash"]) == (
        "paid", owed, response.json["refundPaymentHash"])


def test_a_refund_invoice_for_the_wrong_amount_or_network_is_refused(lnbits, wallets, make_app):
    shop, visitor = wallets
    app = make_app(**lnbits_config(lnbits, shop), BTC_USD=Decimal("100"))
    client, job = completed_job_with_refund(app, lnbits, visitor)
    owed = job["refundAmountSats"]
    shop_before, visitor_before = lnbits.balance_msat(shop), lnbits.balance_msat(visitor)
    url = f"/api/jobs/{job['jobId']}/refund"

    response = client.post(url, json={"invoice": lnbits.invoice(visitor, owed + 1)})
    assert response.status_code == 400 and f"exactly {owed:,} sats" in response.json["error"]
    regtest = DevWallet("another-node").visitor_invoice(owed * 1000)
    response = client.post(url, json={"invoice": regtest})
    assert response.status_code == 400 and "regtest" in response.json["error"]
    assert "mainnet" in response.json["error"]

    assert lnbits.balance_msat(shop) == shop_before and lnbits.balance_msat(visitor) == visitor_before
    assert client.get(url.removesuffix("/refund")).json["refundState"] == "owed"
    # Still claimable with the right invoice.
    assert client.post(url, json={"invoice": lnbits.invoice(visitor, owed)}).json["refundState"] == "paid"


def test_lnbits_notices_a_payment_by_webhook_with_no_watcher(lnbits, wallets, tmp_path, redis_url):
    shop, visitor = wallets
    server = LiveServer(tmp_path, redis_url, **{k: str(v) for k, v in lnbits_config(lnbits, shop).items()},
                        PAYMENT_WATCHER="0")
    server.env["LNBITS_WEBHOOK_BASE_URL"] = server.url
    server.start()
    try:
        session = requests.Session()
        job = session.post(f"{server.url}/api/jobs", json={"request": REQUEST}).json()
        lnbits.pay(visitor, job["evalInvoice"]["paymentRequest"])
        job = poll(session, f"{server.url}/api/jobs/{job['jobId']}",
                   lambda j: j["state"] not in ("awaiting_eval_payment", "evaluating"), timeout=30)
        assert job["state"] == "awaiting_work_payment"
    finally:
        server.stop()
