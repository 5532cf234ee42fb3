"""Bad input and abuse on every route: a clear 4xx, never a 500 or a traceback, no job, no money moved."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.lightning.dev import DevInvoice
from app.models import Invoice, Job, db
from conftest import wait_for_jobs

ROUTES = [  # (method, path) — every route the Workshop serves, with hostile ids
    ("GET", "/"), ("POST", "/jobs"), ("GET", "/jobs/{job}"), ("GET", "/jobs/{job}/events"),
    ("POST", "/jobs/{job}/stop"), ("POST", "/chat"), ("POST", "/api/jobs"),
    ("GET", "/api/jobs/{job}"), ("POST", "/api/jobs/{job}/stop"), ("POST", "/api/dev/pay/{hash}"),
    ("POST", "/dev/pay/{hash}"), ("POST", "/jobs/{job}/refund"), ("POST", "/api/jobs/{job}/refund"),
]
IDS = ["x", "0" * 64, "../../etc/passwd", "%00", "a" * 5000, "<script>", "' OR 1=1 --", "\u2028"]
BODIES = [b"", b"\x00\xff\xfe", b"{", b'{"request": null}', b"[]", b"request=%00", "é".encode("latin-1"),
          json.dumps({"request": "x" * 200_000}).encode(), b'{"request": "\\ud800"}']


def no_money_moved(app):
    with app.app_context():
        assert Job.query.count() == 0 and Invoice.query.count() == 0
        assert DevInvoice.query.filter(DevInvoice.paid_at.isnot(None)).count() == 0


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_route_answers_garbage_with_a_clear_4xx(client, app, method, path):
    for bad_id in IDS:
        url = path.format(job=bad_id, hash=bad_id)
        for body in BODIES:
            for content_type in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
                response = client.open(url, method=method, data=body, content_type=content_type)
                text = response.get_data(as_text=True)
                assert response.status_code < 500, (url, body, response.status_code)
                assert "Traceback" not in text and "sqlalchemy" not in text.lower()
                if response.status_code >= 400 and url.startswith("/api/"):
                    assert response.json["error"]
    no_money_moved(app)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(), st.binary(), st.dictionaries(st.text(), st.text() | st.integers() | st.none()),
                 st.lists(st.integers())))
def test_the_api_survives_any_body(client, app, body):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    response = client.post("/api/jobs", data=data, content_type="application/json")
    assert response.status_code in (201, 400, 413, 415, 429), response.get_data(as_text=True)
    assert "error" in response.json or response.status_code == 201


@pytest.mark.parametrize("text, status, words", [
    ("line\x0bfeed", 400, "control characters"), ("bell\x07", 400, "control characters"),
("x" * 4001, 413, "too long"),
])
def test_form_requests_with_bad_text_are_refused_and_kept(client, app, text, status, words):
    response = client.post("/jobs", data={"request": text})
    assert response.status_code == status and words in response.get_data(as_text=True)
    no_money_moved(app)


def test_invalid_utf8_in_a_form_is_refused(client, app):
    for body in (b"request=caf\xe9", b"request=caf%E9"):  # raw, and percent-encoded
        response = client.post("/jobs", data=body, content_type="application/x-www-form-urlencoded")
        assert response.status_code == 400 and "not valid UTF-8" in response.get_data(as_text=True)
    chat = client.post("/chat", data=b"message=caf%E9", content_type="application/x-www-form-urlencoded")
    assert chat.status_code == 400 and "not valid UTF-8" in chat.get_data(as_text=True)
    no_money_moved(app)


def test_a_lone_surrogate_in_json_is_refused_plainly(client, app):
    response = client.post("/api/jobs", data=b'{"request": "hi \\ud800 there"}', content_type="application/json")
    assert response.status_code == 400 and "not valid UTF-8" in response.json["error"]
    no_money_moved(app)


def test_a_replacement_character_typed_on_purpose_is_ordinary_text(client):
    text = "What does the \ufffd character mean?"
    assert client.post("/api/jobs", json={"request": text}).status_code == 201
    assert client.post("/jobs", data={"request": text}).status_code == 303


def test_end_of_text_markers_are_ordinary_text(client):
    job = client.post("/api/jobs", json={"request": "Explain <|endoftext|> tokens"}).json
    assert job["state"] == "awaiting_eval_payment"
    assert "&lt;|endoftext|&gt;" in client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)


def test_a_request_that_cannot_fit_the_models_context_gets_no_invoice(make_app):
    app = make_app(MODEL_CONTEXT_TOKENS=4200, MAX_OUTPUT_TOKENS=4096)
    response = app.test_client().post("/api/jobs", json={"request": "word " * 200})
    assert response.status_code == 413 and "too long for Timmy's model" in response.json["error"]
    no_money_moved(app)


def test_job_creation_is_rate_limited_per_visitor(make_app):
    client = make_app(JOB_RATE_LIMIT="2 per minute").test_client()
    assert [client.post("/api/jobs", json={"request": "hi"}).status_code for _ in range(3)] == [201, 201, 429]
    assert "Wait a moment" in client.post("/api/jobs", json={"request": "hi"}).json["error"]


def test_refused_requests_cost_no_allowance_but_meet_the_address_limit(make_app):
    client = make_app(JOB_RATE_LIMIT="2 per minute").test_client()
    # Bad input is refused and costs nothing, the visitor's allowance included.
    assert [client.post("/api/jobs", json={"request": ""}).status_code for _ in range(3)] == [400] * 3
    assert [client.post("/api/jobs", json={"request": "hi"}).status_code for _ in range(3)] == [201, 201, 429]
    # A flood of refused requests still meets the address's limit, which counts every request.
    flood = make_app(JOB_RATE_LIMIT_PER_ADDRESS="3 per minute").test_client()
    codes = [flood.post("/api/jobs", json={"request": ""}).status_code for _ in range(5)]
    assert codes == [400, 400, 400, 429, 429]


def test_a_visitor_who_drops_the_cookie_still_meets_the_address_limit(make_app):
    app = make_app(JOB_RATE_LIMIT_PER_ADDRESS="3 per minute")
    codes = [app.test_client().post("/api/jobs", json={"request": "hi"}).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]


def test_open_streams_per_visitor_are_capped(make_app):
    app = make_app(MAX_STREAMS_PER_VISITOR=2)
    client = app.test_client()
    job = client.post("/api/jobs", json={"request": "hi"}).json
    open_streams = [client.get(job["streamUrl"], buffered=False) for _ in range(2)]
    assert all(r.status_code == 200 for r in open_streams)
    # A tab past the cap gets the job as it is now and the stream ends there (the browser asks
    # again after `retry`), saying why it isn't live; it takes no slot.
    for _ in range(2):
        crowded = client.get(job["streamUrl"])
        body = crowded.get_data(as_text=True)
        assert crowded.status_code == 200 and crowded.mimetype == "text/event-stream"
        assert body.startswith(": too many live views\nretry: 5000\n\n")
        assert "event: job_state" in body and "Awaiting evaluation fee" in body
        assert "Too many live views of your jobs are open" in body
    # Closing a stream gives its slot back. (The test client stacks request contexts in one
    # thread, so streams are closed last-opened first.)
    open_streams.pop().close()
    again = client.get(job["streamUrl"], buffered=False)
    assert again.status_code == 200
    assert next(again.response).startswith(b": connected")  # live again, not a snapshot
    again.close()
    open_streams.pop().close()


def test_pages_carry_a_strict_content_security_policy(client):
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in response.get_data(as_text=True).replace("<script src=", "")


def test_double_payment_clicks_move_money_once(client, app):
    job = client.post("/api/jobs", json={"request": "hi there"}).json
    for _ in range(5):
        client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    with app.app_context():
        stored = db.session.get(Job, job["jobId"])
        assert [i.kind for i in stored.invoices] == ["eval", "work"]


def test_deep_json_and_huge_bodies_are_refused_plainly(client, app):
    deep = b'{"request": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # under the size cap, too deep to parse
    response = client.post("/api/jobs", data=deep, content_type="application/json")
    assert response.status_code == 400 and "JSON object" in response.json["error"]
    huge = client.post("/api/jobs", data=b'{"request": "' + b"x" * 2_000_000 + b'"}', content_type="application/json")
    # Refused by the body's size, before it is parsed: not by the request's length, after.
    assert huge.status_code == 413 and "too long to send at once" in huge.json["error"]
    form = client.post("/jobs", data={"request": "x" * 2_000_000})
    page = form.get_data(as_text=True)
    assert form.status_code == 413 and "too long to send at once" in page
    assert len(page) < 50_000  # the page doesn't send the text back
    no_money_moved(app)
