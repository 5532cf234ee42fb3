"""The job lifecycle through the JSON API and the forms, with real Redis and SQLite."""
import bolt11
import pytest

from app import lightning
from app.models import Invoice, Job, db

from conftest import wait_for_jobs

REQUEST = "Plan a beginner's soldering workshop"


def create(client, text=REQUEST):
    response = client.post("/api/jobs", json={"request": text})
    assert response.status_code == 201, response.json
    return response.json


def pay(client, invoice):
    response = client.post(f"/api/dev/pay/{invoice['paymentHash']}")
    assert response.status_code == 200, response.json
    wait_for_jobs()
    return response.json


def run_to_completion(client, text=REQUEST):
    job = create(client, text)
    pay(client, job["evalInvoice"])
    job = client.get(f"/api/jobs/{job['jobId']}").json
    pay(client, job["workInvoice"])
    return client.get(f"/api/jobs/{job['jobId']}").json


def test_create_returns_the_eval_invoice_as_a_real_bolt11(client):
    job = create(client)
    assert job["state"] == "awaiting_eval_payment"
    assert job["streamUrl"] == f"/jobs/{job['jobId']}/events"
    invoice = bolt11.decode(job["evalInvoice"]["paymentRequest"])
    assert invoice.currency == "bcrt" and invoice.amount_msat == 10_000
    assert invoice.payment_hash == job["evalInvoice"]["paymentHash"]
    assert job["evalInvoice"]["amountSats"] == 10


def test_paid_eval_quotes_the_work_with_a_breakdown(client):
    job = create(client)
    pay(client, job["evalInvoice"])
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "awaiting_work_payment"
    breakdown = job["pricingBreakdown"]
    assert job["workInvoice"]["amountSats"] == breakdown["amountSats"] > 0
    assert breakdown["estimatedTokens"] == breakdown["inputTokens"] + breakdown["estimatedOutputTokens"]
    assert breakdown["btcUsd"] == "100000.00" and breakdown["marginPct"] == "20"


def test_a_whole_job_settles_its_ledger(client, app):
    job = run_to_completion(client)
    assert job["state"] == "complete" and job["result"]
    ledger = job["costLedger"]
    assert ledger["usageSource"] == "provider"
    assert ledger["estimatedSats"] == job["workInvoice"]["amountSats"]
    assert ledger["refundOwedMsat"] == max(0, (ledger["paidMsat"] - ledger["actualMsat"]) // 1000 * 1000)
    from app.metering import count_tokens
    assert ledger["outputTokens"] == count_tokens(job["result"])
    assert "pricingBreakdown" not in job


def test_a_payment_confirmed_twice_advances_the_job_once(client, app):
    job = create(client)
    pay(client, job["evalInvoice"])
    again = pay(client, job["evalInvoice"])
    assert again["state"] == "awaiting_work_payment"
    with app.app_context():
        stored = db.session.get(Job, job["jobId"])
        assert len(stored.invoices) == 2  # eval + one work invoice, not two
        from app import jobs
        with app.test_request_context():
            jobs.on_payment(job["evalInvoice"]["paymentHash"])
        assert len(db.session.get(Job, job["jobId"]).invoices) == 2


def test_work_cannot_start_before_the_eval_fee_is_paid(client):
    job = create(client)
    response = client.post("/api/dev/pay/" + "0" * 64)
    assert response.status_code == 404 and "error" in response.json
    assert client.get(f"/api/jobs/{job['jobId']}").json["state"] == "awaiting_eval_payment"


def test_abusive_request_is_rejected_with_a_reason(client):
    job = create(client, "write ransomware for me")
    pay(client, job["evalInvoice"])
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "rejected" and job["reason"]
    assert job["workInvoice"] is None


def test_an_expired_invoice_ends_the_job_and_cannot_be_paid(make_app):
    app = make_app(INVOICE_EXPIRY_SECONDS=0)
    client = app.test_client()
    job = create(client)
    response = client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    assert response.status_code == 410 and "expired" in response.json["error"]
    shown = client.get(f"/api/jobs/{job['jobId']}").json
    assert shown["state"] == "expired" and shown["evalInvoice"]["state"] == "expired"


@pytest.mark.parametrize("body, status, words", [
    ({"request": ""}, 400, "empty"),
    ({"request": "   \n "}, 400, "empty"),
    ({"request": "x" * 100_000}, 413, "too long"),
    ({"request": "nul\x00byte"}, 400, "control characters"),
    ({"request": 42}, 400, "text"),
    ({"nope": "x"}, 400, "request"),
    ([1, 2], 400, "request"),
])
def test_bad_requests_get_a_clear_error_and_make_no_job(client, app, body, status, words):
    response = client.post("/api/jobs", json=body)
    assert response.status_code == status
    assert words in response.json["error"]
    with app.app_context():
        assert Job.query.count() == 0 and Invoice.query.count() == 0


def test_invalid_utf8_and_non_json_bodies_are_refused(client, app):
    response = client.post("/api/jobs", data=b'{"request": "\xff\xfe"}', content_type="application/json")
    assert response.status_code == 400 and "UTF-8" in response.json["error"]
    response = client.post("/api/jobs", data="request=hi")
    assert response.status_code == 415 and "JSON" in response.json["error"]
    response = client.post("/api/jobs", data="{not json", content_type="application/json")
    assert response.status_code == 400
    with app.app_context():
        assert Job.query.count() == 0


def test_a_foreign_origin_is_refused(client):
    response = client.post("/api/jobs", json={"request": REQUEST}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403


def test_another_visitors_job_is_404_everywhere(client, app):
    job = create(client)
    stranger = app.test_client()
    for url in (f"/api/jobs/{job['jobId']}", f"/jobs/{job['jobId']}", job["streamUrl"]):
        assert stranger.get(url).status_code == 404
    assert stranger.post(f"/dev/pay/{job['evalInvoice']['paymentHash']}").status_code == 404


def test_html_in_the_request_and_answer_is_escaped(client):
    job = run_to_completion(client, 'Make <script>alert(1)</script> & <img src=x onerror="alert(2)">')
    page = client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)</script>" in job["result"]  # the answer quotes it; the page escapes it


def test_forms_work_without_javascript(client):
    response = client.post("/jobs", data={"request": REQUEST})
    assert response.status_code == 303
    page = client.get(response.location).get_data(as_text=True)
    assert "Pay with development wallet" in page and 'http-equiv="refresh"' in page
    payment_hash = page.split('/dev/pay/')[1].split('"')[0]
    assert client.post(f"/dev/pay/{payment_hash}").status_code == 303


def test_a_bad_form_keeps_the_visitors_text(client, app):
    response = client.post("/jobs", data={"request": "x" * 5000})
    assert response.status_code == 413
    assert "x" * 5000 in response.get_data(as_text=True) and "too long" in response.get_data(as_text=True)
    with app.app_context():
        assert Job.query.count() == 0


def test_forms_need_a_csrf_token(make_app):
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    response = client.post("/jobs", data={"request": REQUEST})
    assert response.status_code == 400 and b"Reload the page" in response.data
    page = client.get("/").get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/jobs", data={"request": REQUEST, "csrf_token": token}).status_code == 303
    # The JSON API is for scripts: JSON bodies, no token, origin-checked.
    assert client.post("/api/jobs", json={"request": REQUEST}).status_code == 201


def test_paying_anothers_invoice_tells_nothing_of_their_job(app):
    owner, stranger = app.test_client(), app.test_client()
    job = create(owner)
    paid = stranger.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}").json
    wait_for_jobs()
    assert paid == {"paymentHash": job["evalInvoice"]["paymentHash"], "paid": True}
    assert owner.get(f"/api/jobs/{job['jobId']}").json["state"] == "awaiting_work_payment"
    assert pay(owner, owner.get(f"/api/jobs/{job['jobId']}").json["workInvoice"])["jobId"] == job["jobId"]


def test_every_form_route_refuses_a_post_without_a_csrf_token(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    client = app.test_client()
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    hash_ = job["evalInvoice"]["paymentHash"]
    forms = [rule for rule in app.url_map.iter_rules() if "POST" in rule.methods
             and not rule.rule.startswith("/api/")]
    assert len(forms) >= 4, forms  # jobs, stop, chat, the dev wallet's pay button
    for rule in forms:
        url = rule.rule.replace("<job_id>", job["jobId"]).replace("<payment_hash>", hash_)
        response = client.post(url, data={"request": REQUEST, "message": "hi"})
        assert response.status_code == 400 and b"Reload the page" in response.data, rule.rule
    with app.app_context():
        assert Job.query.count() == 1 and db.session.get(Job, job["jobId"]).state == "awaiting_eval_payment"


def test_the_dev_pay_endpoint_is_absent_with_a_real_wallet(make_app, monkeypatch):
    class OtherWallet:
        pass
    monkeypatch.setitem(lightning.BACKENDS, "other", lambda app: OtherWallet())
    app = make_app(WALLET="other")
    assert app.test_client().post("/api/dev/pay/" + "0" * 64).status_code == 404
    assert "devpay.api_pay" not in app.view_functions


def test_payments_arriving_together_change_states_one_at_a_time(client, app, monkeypatch):
    # A state change's database work and render don't yield to the event loop; with many
    # payments at once, taking turns keeps them from piling up between two ticker batches.
    import gevent
    from app import events, jobs
    paid = [create(client) for _ in range(3)]
    spans, publish = [], events.publish_state

    def slow_publish(job):
        spans.append(("enter", job.id))
        gevent.sleep(0.05)  # a publish waits on Redis: other greenlets run meanwhile
        spans.append(("exit", job.id))
        publish(job)

    monkeypatch.setattr(events, "publish_state", slow_publish)
    monkeypatch.setattr(jobs, "spawn", lambda *args: None)  # only the payments' own state changes
    payers = [gevent.spawn(client.post, f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
              for job in paid]
    gevent.joinall(payers, raise_error=True)
    assert [payer.value.status_code for payer in payers] == [200, 200, 200]
    # Each payment's state change ends before the next one begins.
    assert len(spans) == 6 and all(spans[i][0] == "enter" and spans[i + 1] == ("exit", spans[i][1])
                                   for i in range(0, 6, 2)), spans


def test_a_payment_waits_for_its_turn_without_holding_a_database_connection(make_app):
    # One pooled connection: a payment that kept the wallet's read open while waiting for the
    # turn would starve the turn's holder of the connection it needs, and both would stall.
    import gevent
    from sqlalchemy import text
    from app import turns
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 3})
    client = app.test_client()
    job = create(client)

    def holder():
        with app.app_context(), turns.take():
            gevent.sleep(0.3)  # meanwhile the payment reads the wallet and waits for the turn
            db.session.execute(text("select 1"))
            db.session.commit()

    held = gevent.spawn(holder)
    gevent.sleep(0)
    paid = client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    held.join(10)
    wait_for_jobs()
    assert held.successful(), held.exception
    assert paid.status_code == 200
    assert client.get(f"/api/jobs/{job['jobId']}").json["state"] == "awaiting_work_payment"


def test_a_state_change_reads_the_job_and_all_its_card_shows_in_one_query(client, app, monkeypatch):
    # transition() reloads the job with its invoices, ledger and refund, so publishing the new
    # card issues no lazy load of its own: one SELECT instead of four, for every state change.
    from sqlalchemy import event
    from app import jobs
    job = create(client)
    monkeypatch.setattr(jobs, "spawn", lambda *args: None)
    with app.test_request_context():
        stored = db.session.get(Job, job["jobId"])
        stored.invoices  # loaded before, as on_payment has them
        statements = []
        listener = lambda conn, cursor, sql, *rest: statements.append(sql.split()[0])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            assert jobs.transition(stored, "awaiting_eval_payment", "evaluating")
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
    assert statements == ["UPDATE", "SELECT"]
