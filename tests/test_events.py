"""SSE framing, the snapshot a (re)connecting viewer gets, and trimming of overlapping answer text."""
import json

import pytest

from app import bus, events, fragments, publisher
from app.events import Frame, _unsent_part
from app.models import Job, db
from conftest import parse_sse, sse_lines, wait_for_jobs


@pytest.mark.parametrize("data", [
    "plain", "two\nlines", "crlf\r\nline", "cr\rline", "  leading spaces", "\nstarts with newline",
    "ends with newline\n", "\n\n", "u2028\u2028u2029\u2029nel\x85ff\x0cvt\x0b", " ", "<p>\n  html\n</p>",
])
def test_frames_arrive_intact_or_with_line_breaks_normalised(data):
    parsed = list(parse_sse(sse_lines(str(Frame(data, type="job_answer")))))
    assert parsed == [("job_answer", data.replace("\r\n", "\n").replace("\r", "\n"))]


def test_unsent_part_trims_what_the_snapshot_already_had(app):
    with app.test_request_context():
        frame = {"type": "job_progress", "data": "<span>", "answer": "abc&lt;", "start": 10, "text": "abc<"}
        assert _unsent_part(frame, 14) == (None, 14)           # all of it was in the snapshot
        assert _unsent_part(frame, 10) == ("abc&lt;", 14)      # none of it was
        assert _unsent_part(frame, 12) == ("c&lt;", 14)        # half of it was


def read_stream(client, url, stop_after):
    """Read a job's stream until `stop_after` events arrived; return them."""
    response = client.get(url, buffered=False)
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    body, seen = "", []
    chunks = iter(response.response)
    first = next(chunks)
    assert first.startswith(b":")  # a comment at once: headers and a first byte before any event
    for chunk in chunks:
        body += chunk.decode()
        seen = list(parse_sse(sse_lines(body)))
        if len(seen) >= stop_after:
            break
    response.close()
    return seen


def test_a_viewer_of_a_finished_job_gets_its_final_state_then_the_stream_ends(client):
    job = client.post("/api/jobs", json={"request": "Tell me about flux"}).json
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    work = client.get(f"/api/jobs/{job['jobId']}").json["workInvoice"]
    client.post(f"/api/dev/pay/{work['paymentHash']}")
    wait_for_jobs()
    seen = read_stream(client, job["streamUrl"], 3)
    assert [e for e, _ in seen] == ["job_live", "job_state", "job_complete"]
    assert 'data-live="1"' in seen[0][1]  # nothing is live any more: no "reconnecting" notice
    assert 'data-state="complete"' in seen[1][1] and "data-actual-msat" in seen[2][1]


def test_a_viewer_joining_mid_job_gets_the_live_state_first(client, app):
    job = client.post("/api/jobs", json={"request": "Tell me about flux"}).json
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    with app.test_request_context():
        stored = db.session.get(Job, job["jobId"])
        stored.state = "executing"
        db.session.commit()
        events.publish_progress(stored, tokens=1247, output_tokens=1200, msat=3801,
                                text="Half an answer", start=0)
    seen = read_stream(client, job["streamUrl"], 1)
    card = seen[0][1]
    assert 'data-tokens="1247"' in card and "~1,247 tokens · ~4 sats" in card
    assert "Half an answer" in card


def test_progress_is_published_with_absolute_figures_and_kept_for_late_viewers(app):
    with app.test_request_context():
        job = Job(visitor_id="v", request="r", model="timmy-demo", state="executing", input_tokens=10)
        db.session.add(job)
        db.session.commit()
        pubsub = bus.client().pubsub()
        pubsub.subscribe(events.channel(job))
        # Confirmed before anything is published: pub/sub keeps nothing for late subscribers.
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        events.publish_progress(job, tokens=12, output_tokens=2, msat=1500, text="Hi ", start=0)
        events.publish_progress(job, tokens=13, output_tokens=3, msat=1600, text="<b>", start=3)
        frames = []
        while len(frames) < 2:
            message = pubsub.get_message(timeout=5)
            if message:
                frames.append(json.loads(message["data"]))
        pubsub.close()
        # One message a frame: the ticker, with the new text (escaped, and as it is) inside it.
        assert [f["type"] for f in frames] == ["job_progress"] * 2
        assert 'data-tokens="13"' in frames[1]["data"] and frames[1]["answer"] == "&lt;b&gt;"
        assert (frames[1]["start"], frames[1]["text"]) == (3, "<b>")
        state = fragments.live.read(job)
        assert (state.tokens, state.output_tokens, state.msat, state.text) == (13, 3, 1600, "Hi <b>")


def test_frames_of_jobs_publishing_at_once_share_round_trips_and_all_arrive(app, monkeypatch):
    import gevent
    with app.test_request_context():
        jobs = [Job(visitor_id="v", request="r", model="timmy-demo", state="executing", input_tokens=1)
                for _ in range(20)]
        db.session.add_all(jobs)
        db.session.commit()
        pubsub = bus.client().pubsub()
        pubsub.subscribe(*[events.channel(job) for job in jobs])
        for _ in jobs:
            assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        events.request_stop(jobs[3])
    trips, execute = [], publisher.Publisher._execute
    monkeypatch.setattr(publisher.Publisher, "_execute",
                        lambda self, commands: trips.append(len(commands)) or execute(self, commands))

    def publish(job):
        with app.test_request_context():
            return events.publish_progress(job, tokens=2, output_tokens=1, msat=1000, text="a", start=0)

    stops = [g.get()[1] for g in gevent.joinall([gevent.spawn(publish, job) for job in jobs])]
    assert len(trips) < 20  # shared round trips
    assert stops == [i == 3 for i in range(20)]  # each job hears about its own Stop only
    got = {}
    while sum(len(v) for v in got.values()) < 20:
        message = pubsub.get_message(timeout=5)
        assert message is not None
        if message["type"] == "message":
            got.setdefault(message["channel"].decode(), []).append(json.loads(message["data"])["type"])
    pubsub.close()
    assert got == {events.channel(job): ["job_progress"] for job in jobs}


def test_frames_that_arrive_together_leave_in_one_write_and_a_final_panel_ends_it(app):
    from app import fanout
    messages = [json.dumps({"type": "job_progress", "data": "<span>1</span>"}).encode(),
                json.dumps({"type": "job_answer", "data": "Hel", "start": 0, "text": "Hel"}).encode(),
                json.dumps({"type": "job_progress", "data": "<span>2</span>", "answer": "lo", "start": 3,
                            "text": "lo"}).encode(),
                json.dumps({"type": "job_complete", "data": "<p>done</p>"}).encode(),
                json.dumps({"type": "job_progress", "data": "after the end"}).encode()]
    with app.test_request_context():
        out, sent, outcome = events._render(messages, 1)  # the snapshot had "H" already
        trimmed = fragments.answer_chunk("el")
    # A ticker frame's text goes out as its own job_answer event, after the ticker.
    assert list(parse_sse(sse_lines(out))) == [("job_progress", "<span>1</span>"), ("job_answer", trimmed),
                                               ("job_progress", "<span>2</span>"), ("job_answer", "lo"),
                                               ("job_complete", "<p>done</p>")]
    assert sent == 5 and outcome is events.DONE
    assert events._render([messages[0], fanout.LOST, messages[1]], 0)[1:] == (0, events.LOST)
    assert events._render([messages[0], fanout.LEFT], 0)[2] is events.DONE
    assert events._render([messages[2]], 1) == ("", 1, events.RESYNC)  # "lo" at 3, but only 1 was sent
    # A frame whose text the snapshot already had is older than the snapshot: its ticker too.
    assert events._render([messages[2]], 5) == ("", 5, None)
