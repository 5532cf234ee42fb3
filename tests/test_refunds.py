"""Refunds and payment watching on the development wallet: the embedded default shows the whole flow."""
import time
from datetime import timedelta
from decimal import Decimal

import os
import secrets
import threading

import bolt11
import pytest
from bolt11.models.tags import TagChar, Tags
from flask import g
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import refunds, watcher
from app.lightning import get_wallet
from app.lightning.dev import DevInvoice, DevPayment
from app.models import Invoice, Job, Refund, db, utcnow

from conftest import wait_for_jobs
from test_jobs import create, pay, run_to_completion


@pytest.fixture
def app(make_app):
    # Cheap BTC: a work invoice of thousands of sats, so the actual cost leaves a refund owed.
    # A high payment limit: the property test below sends many claims in a minute.
    return make_app(BTC_USD=Decimal("100"), PAY_RATE_LIMIT="1000 per minute")


def visitor_invoice(app, msat):
    with app.app_context():
        return get_wallet().visitor_invoice(msat)


def outside_invoice(currency, msat, date=None, expiry=3600):
    """Return an invoice signed by some visitor's node, on any network."""
    tags = Tags()
    tags.add(TagChar.payment_hash, secrets.token_hex(32))
    tags.add(TagChar.payment_secret, secrets.token_hex(32))
    tags.add(TagChar.description, "refund")
    tags.add(TagChar.expire_time, expiry)
    invoice = bolt11.Bolt11(currency=currency, date=date or int(time.time()), tags=tags,
                            amount_msat=bolt11.MilliSatoshi(msat))
    return bolt11.encode(invoice, "11" * 32)


def completed(client):
    job = run_to_completion(client)
    assert job["state"] == "complete" and job["refundState"] == "owed"
    assert job["refundAmountSats"] == job["costLedger"]["refundOwedSats"] > 0
    return job


def test_the_refund_owed_is_paid_once_and_recorded_with_its_hash(client, app):
    job = completed(client)
    invoice = visitor_invoice(app, job["refundAmountSats"] * 1000)
    response = client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": invoice})
    assert response.status_code == 200
    payment_hash = bolt11.decode(invoice).payment_hash
    assert response.json == {"jobId": job["jobId"], "refundState": "paid",
                             "refundAmountSats": job["refundAmountSats"], "refundPaymentHash": payment_hash}
    again = client.post(f"/api/jobs/{job['jobId']}/refund",
                        json={"invoice": visitor_invoice(app, job["refundAmountSats"] * 1000)})
    assert again.status_code == 409 and again.json["refundPaymentHash"] == payment_hash
    with app.app_context():
        payments = DevPayment.query.all()
        assert [(p.payment_hash, p.amount_msat) for p in payments] == [(payment_hash, job["refundAmountSats"] * 1000)]
    page = client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)
    assert "Refunded" in page and payment_hash in page and "Claim refund" not in page


def test_two_claims_at_once_pay_once(client, app, monkeypatch):
    job = completed(client)
    amount = job["refundAmountSats"] * 1000
    first, second = visitor_invoice(app, amount), visitor_invoice(app, amount)
    wallet = app.extensions["wallet"]
    real_pay, answers = wallet.pay_invoice, []

    def pay_while_another_claims(payment_request):
        # The second claim lands while the first payment is in flight.
        answers.append(client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": second}))
        return real_pay(payment_request)

    monkeypatch.setattr(wallet, "pay_invoice", pay_while_another_claims)
    response = client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": first})
    assert response.status_code == 200 and response.json["refundState"] == "paid"
    assert answers[0].status_code == 409
    assert answers[0].json["refundPaymentHash"] == bolt11.decode(first).payment_hash
    with app.app_context():
        assert DevPayment.query.count() == 1


def test_bad_refund_invoices_are_refused_and_nothing_is_paid(client, app):
    job = completed(client)
    owed_msat = job["refundAmountSats"] * 1000
    url = f"/api/jobs/{job['jobId']}/refund"
    expired = outside_invoice("bcrt", owed_msat, date=int(time.time()) - 7200)
    mainnet = outside_invoice("bc", owed_msat)
    cases = [
        ("", "Paste a Lightning invoice"),
        ("not an invoice", "isn't a Lightning invoice"),
        (visitor_invoice(app, owed_msat + 1000), f"exactly {job['refundAmountSats']:,} sats"),
        (mainnet, "mainnet"),
        (expired, "expired"),
        (job["evalInvoice"]["paymentRequest"], "Workshop's own"),
    ]
    for text, words in cases:
        response = client.post(url, json={"invoice": text})
        assert response.status_code == 400 and words in response.json["error"], (text, response.json)
    assert client.post(url, json={"nope": 1}).status_code == 400
    assert client.post(url, data="invoice=x").status_code == 400
    with app.app_context():
        assert DevPayment.query.count() == 0
        assert db.session.get(Refund, job["jobId"]).state == "owed"
    # The right invoice, with the wallet's "lightning:" prefix and stray spaces, still works.
    right = "  lightning:" + visitor_invoice(app, owed_msat).upper() + "\n"
    assert client.post(url, json={"invoice": right}).json["refundState"] == "paid"


def test_nothing_owed_and_other_visitors_are_refused(client, app):
    job = create(client)
    response = client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": "lnbcrt1"})
    assert response.status_code == 409 and "Nothing is owed" in response.json["error"]
    assert client.get(f"/api/jobs/{job['jobId']}").json["refundState"] == "none"
    stranger = app.test_client()
    assert stranger.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": "x"}).status_code == 404


def test_the_refund_form_works_without_javascript_and_with_htmx(client, app):
    job = completed(client)
    page = client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)
    assert "Claim refund" in page and "paid minus actual, rounded down to whole sats" in page
    # The development wallet fills the form with an invoice from a stand-in visitor wallet.
    prefilled = page.split('name="invoice"')[1].split(">", 1)[1].split("</textarea>")[0]
    assert bolt11.decode(prefilled).amount_msat == job["refundAmountSats"] * 1000
    wrong = visitor_invoice(app, job["refundAmountSats"] * 1000 + 1000)
    response = client.post(f"/jobs/{job['jobId']}/refund", data={"invoice": wrong})
    assert response.status_code == 400 and "make one for exactly" in response.get_data(as_text=True)
    response = client.post(f"/jobs/{job['jobId']}/refund", data={"invoice": wrong}, headers={"HX-Request": "true"})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and html.startswith(f'<div id="refund-{job["jobId"]}"')
    response = client.post(f"/jobs/{job['jobId']}/refund", data={"invoice": prefilled})
    assert response.status_code == 303
    response = client.post(f"/jobs/{job['jobId']}/refund", data={"invoice": prefilled}, headers={"HX-Request": "true"})
    assert response.status_code == 409 and "already been claimed" in response.get_data(as_text=True)
    assert "Refunded" in client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)


def test_the_refund_form_needs_a_csrf_token(make_app):
    app = make_app(BTC_USD=Decimal("100"), WTF_CSRF_ENABLED=True)
    client = app.test_client()
    job = completed(client)
    invoice = visitor_invoice(app, job["refundAmountSats"] * 1000)
    assert client.post(f"/jobs/{job['jobId']}/refund", data={"invoice": invoice}).status_code == 400
    with app.app_context():
        assert DevPayment.query.count() == 0


def sweep(app, backoff, now):
    with app.test_request_context():
        g.pushing = True
        watcher.sweep(backoff, now)
        db.session.remove()
    wait_for_jobs()


def settle_in_wallet_only(app, payment_hash):
    """Pay a development invoice the way an outside wallet would: nobody tells the Workshop."""
    with app.app_context():
        db.session.get(DevInvoice, payment_hash).paid_at = utcnow()
        db.session.commit()


def test_the_watcher_notices_payments_backs_off_and_resumes_from_the_database(client, app, monkeypatch):
    job = create(client)
    wallet = app.extensions["wallet"]
    asked = []
    real_is_paid = wallet.is_paid
    monkeypatch.setattr(wallet, "is_paid", lambda h: asked.append(h) or real_is_paid(h))
    backoff = watcher.Backoff(8)
    for now in (0, 0.5, 1, 2, 3, 5, 7, 8, 11, 15, 19, 23, 27, 31):
        sweep(app, backoff, now)
    # Asked at 0, then after 1, 2, 4, 8, 8, 8 s: the delay doubles up to the maximum.
    assert len(asked) == 7
    assert client.get(f"/api/jobs/{job['jobId']}").json["state"] == "awaiting_eval_payment"

    settle_in_wallet_only(app, job["evalInvoice"]["paymentHash"])
    sweep(app, watcher.Backoff(8), 100)  # a restarted worker: a new watcher asks at once
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "awaiting_work_payment"
    sweep(app, watcher.Backoff(8), 200)
    with app.app_context():
        assert Invoice.query.filter_by(job_id=job["jobId"]).count() == 2


def test_the_watcher_expires_an_unpaid_invoice_and_a_late_payment_still_runs_the_job(client, app):
    job = create(client)
    with app.app_context():
        db.session.get(Invoice, job["evalInvoice"]["paymentHash"]).expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    sweep(app, watcher.Backoff(8), 0)
    assert client.get(f"/api/jobs/{job['jobId']}").json["state"] == "expired"
    settle_in_wallet_only(app, job["evalInvoice"]["paymentHash"])
    sweep(app, watcher.Backoff(8), 1)
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "awaiting_work_payment" and job["refundState"] == "none"


def test_a_payment_for_a_job_that_can_no_longer_run_is_owed_back(client, app):
    job = create(client)
    # The job ended another way (an operator closed it) while its invoice was still open.
    with app.app_context():
        db.session.get(Job, job["jobId"]).state = "failed"
        db.session.commit()
    settle_in_wallet_only(app, job["evalInvoice"]["paymentHash"])
    sweep(app, watcher.Backoff(8), 0)
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "failed"
    assert (job["refundState"], job["refundAmountSats"]) == ("owed", 10)
    page = client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)
    assert "after the job had ended" in page and "Claim refund" in page


def test_a_failed_evaluation_owes_the_fee_back(client, app, monkeypatch):
    from app.agent import ProviderError, get_agent
    with app.app_context():
        agent = get_agent()
    monkeypatch.setattr(type(agent), "evaluate", lambda self, text: (_ for _ in ()).throw(ProviderError("down")))
    job = create(client)
    pay(client, job["evalInvoice"])
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "failed" and "owed back" in job["errorMessage"]
    assert (job["refundState"], job["refundAmountSats"]) == ("owed", 10)


@pytest.mark.parametrize("sent, settled", [(True, "paid"), (False, "owed")])
def test_a_refund_whose_outcome_is_unknown_is_asked_about_never_sent_again(client, app, monkeypatch, sent, settled):
    job = completed(client)
    wallet = app.extensions["wallet"]
    real_pay, calls = wallet.pay_invoice, []

    def lost_answer(payment_request):
        calls.append(payment_request)
        if sent:
            real_pay(payment_request)
        raise TimeoutError("the wallet's answer was lost")

    monkeypatch.setattr(wallet, "pay_invoice", lost_answer)
    invoice = visitor_invoice(app, job["refundAmountSats"] * 1000)
    response = client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": invoice})
    assert response.status_code == 200 and response.json["refundState"] == "pending"
    assert client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": invoice}).status_code == 409
    sweep(app, watcher.Backoff(8), 0)
    assert client.get(f"/api/jobs/{job['jobId']}").json["refundState"] == settled
    assert len(calls) == 1
    with app.app_context():
        assert DevPayment.query.count() == (1 if sent else 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=3000), st.just("lnbcrt" + "q" * 400),
                      st.text(alphabet="qpzry9x8gf2tvdw0s3jn54khce6mua7l1", min_size=1, max_size=300)
                      .map(lambda t: "lnbcrt1" + t)))
def test_any_text_as_a_refund_invoice_is_a_clear_4xx_and_pays_nothing(client, app, text):
    job = refund_job.get(id(app)) or refund_job.setdefault(id(app), completed(client))
    response = client.post(f"/api/jobs/{job['jobId']}/refund", json={"invoice": text})
    assert response.status_code == 400 and response.json["error"]
    with app.app_context():
        assert DevPayment.query.count() == 0


refund_job = {}


@pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"),
                    reason="TEST_DATABASE_URL unset: no PostgreSQL server to race claims on")
def test_two_claims_racing_on_postgres_pay_once(make_app, monkeypatch):
    app = make_app(DATABASE_URL=os.environ["TEST_DATABASE_URL"], BTC_USD=Decimal("100"))
    with app.app_context():
        db.drop_all()
        db.create_all()
    try:
        job = completed(app.test_client())
        amount = job["refundAmountSats"] * 1000
        invoices = [visitor_invoice(app, amount) for _ in range(2)]
        # Both claims pass every check, then race for the conditional update at the same moment.
        barrier, real_check = threading.Barrier(2), refunds.check_invoice

        def check_then_wait(*args):
            checked = real_check(*args)
            barrier.wait(10)
            return checked

        monkeypatch.setattr(refunds, "check_invoice", check_then_wait)
        outcomes = []

        def claim(invoice):
            with app.test_request_context():
                try:
                    outcomes.append(refunds.claim(db.session.get(Job, job["jobId"]), invoice).state)
                except refunds.RefundError as error:
                    outcomes.append((error.status, error.refund.payment_hash))
                finally:
                    db.session.remove()

        threads = [threading.Thread(target=claim, args=(i,)) for i in invoices]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        with app.app_context():
            payments = DevPayment.query.all()
            assert len(payments) == 1
            assert sorted(outcomes, key=str) == sorted(["paid", (409, payments[0].payment_hash)], key=str)
    finally:
        with app.app_context():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()
