"""The slice with real parts: gunicorn with the gevent worker, a real Redis, SSE read as a client."""
import html
import re
import threading

import pytest
import requests

from app.metering import count_tokens
from conftest import LiveServer, parse_sse

pytestmark = pytest.mark.integration


def attr(fragment, name):
    return int(re.search(rf'{name}="(\d+)"', fragment).group(1))


class Viewer(threading.Thread):
    """An SSE client in a thread: records every event and comment of one stream."""

    def __init__(self, session, url):
        super().__init__(daemon=True)
        self.session, self.url, self.events, self.comments = session, url, [], []
        self.connected = threading.Event()

    def run(self):
        with self.session.get(self.url, stream=True, timeout=60) as response:
            self.status = response.status_code
            self.headers = response.headers
            self.connected.set()
            lines = []
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith(":"):
                    self.comments.append(line)
                lines.append(line)
                if line == "":
                    self.events = list(parse_sse(lines))
                    if self.events and self.events[-1][0] == "job_complete":
                        return


def start_job(server, session, text):
    job = session.post(f"{server.url}/api/jobs", json={"request": text}).json()
    session.post(f"{server.url}/api/dev/pay/{job['evalInvoice']['paymentHash']}").raise_for_status()
    for _ in range(200):
        job = session.get(f"{server.url}/api/jobs/{job['jobId']}").json()
        if job["state"] != "evaluating":
            break
        threading.Event().wait(0.05)
    assert job["state"] == "awaiting_work_payment", job
    return job


def answer_of(events):
    return "".join(html.unescape(data) for kind, data in events if kind == "job_answer")


def test_a_paid_job_streams_ticker_frames_answer_and_final_panel(live_server):
    session = requests.Session()
    job = start_job(live_server, session, "Explain Lightning invoices with a code example, in detail")
    viewer = Viewer(session, live_server.url + job["streamUrl"])
    viewer.start()
    assert viewer.connected.wait(10)
    assert viewer.headers["Cache-Control"] == "no-cache" and viewer.headers["X-Accel-Buffering"] == "no"
    session.post(f"{live_server.url}/api/dev/pay/{job['workInvoice']['paymentHash']}").raise_for_status()
    viewer.join(60)
    events = viewer.events
    final = session.get(f"{live_server.url}/api/jobs/{job['jobId']}").json()
    assert final["state"] == "complete"

    progress = [data for kind, data in events if kind == "job_progress"]
    tokens = [attr(f, "data-tokens") for f in progress]
    assert len(progress) >= 3 and tokens == sorted(tokens)
    assert all(re.search(r">~[\d,]+ tokens · ~[\d,]+ sats?</span>", f) for f in progress)
    assert attr(progress[-1], "data-output-tokens") == count_tokens(final["result"])
    assert attr(progress[-1], "data-tokens") == count_tokens(final["result"]) + final["costLedger"]["inputTokens"]
    # Frames are coalesced: far fewer ticker frames than the demo's word-sized deltas.
    assert len(progress) < len(final["result"].split()) / 2

    kind, panel = events[-1]
    assert kind == "job_complete"
    assert attr(panel, "data-actual-msat") == final["costLedger"]["actualMsat"]
    assert attr(panel, "data-estimated-sat") == final["workInvoice"]["amountSats"]
    assert attr(panel, "data-output-tokens") == count_tokens(final["result"])
    assert answer_of(events) == final["result"]  # the stored job equals what was streamed
    session.close()


def test_a_viewer_joining_mid_stream_catches_up_exactly(tmp_path, redis_url):
    server = LiveServer(tmp_path, redis_url, DEMO_TOKENS_PER_SECOND="60").start()
    session = requests.Session()
    try:
        job = start_job(server, session, "Write a detailed plan for a community repair cafe")
        session.post(f"{server.url}/api/dev/pay/{job['workInvoice']['paymentHash']}").raise_for_status()
        threading.Event().wait(1.0)  # let some of the answer stream before this viewer arrives
        viewer = Viewer(session, server.url + job["streamUrl"])
        viewer.start()
        viewer.join(60)
        final = session.get(f"{server.url}/api/jobs/{job['jobId']}").json()
        first_kind, card = viewer.events[0]
        assert first_kind == "job_state" and 'data-state="executing"' in card
        snapshot = html.unescape(re.search(r'class="answer"[^>]*>(.*?)</div>', card, re.S).group(1))
        assert snapshot  # it joined mid-answer
        assert snapshot + answer_of(viewer.events) == final["result"]  # never doubled, nothing lost
        assert attr(card, "data-tokens") > final["costLedger"]["inputTokens"]
    finally:
        session.close()  # an idle keep-alive connection would hold up gunicorn's graceful stop
        server.stop()


def test_idle_streams_get_heartbeats_and_strangers_get_nothing(tmp_path, redis_url):
    server = LiveServer(tmp_path, redis_url, SSE_HEARTBEAT_SECONDS="1").start()
    session = requests.Session()
    try:
        job = session.post(f"{server.url}/api/jobs", json={"request": "Hello"}).json()
        stranger = requests.get(server.url + job["streamUrl"], timeout=10)
        assert stranger.status_code == 404
        with session.get(server.url + job["streamUrl"], stream=True, timeout=10) as response:
            lines = response.iter_lines(decode_unicode=True)
            assert next(lines).startswith(": connected")
            heartbeats = 0
            for line in lines:
                heartbeats += line == ": heartbeat"
                if heartbeats == 2:
                    break
        assert heartbeats == 2
    finally:
        session.close()  # an idle keep-alive connection would hold up gunicorn's graceful stop
        server.stop()
