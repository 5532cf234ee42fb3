"""The ticker: frames coalesced per job, the first delta after a quiet spell sent at once, the last always."""
import json
import re

import gevent
import pytest

from app import events, live, runner, ticker
from app.agent import TextDelta, Usage
from app.metering import count_tokens
from app.models import Job, db

from conftest import wait_for_jobs


class ScriptedAgent:
    """A provider whose deltas and pauses the test chooses; it may look at the job between deltas."""

    encoding = "o200k_base"

    def __init__(self, script, usage=True):
        self.script, self.usage, self.text = script, usage, ""

    def prompt(self, request):
        return request

    def stream(self, request, max_tokens=None):
        for step in self.script:
            if callable(step):
                step()
            elif isinstance(step, float):
                gevent.sleep(step)
            else:
                self.text += step
                yield TextDelta(step)
        if self.usage:
            yield Usage(input_tokens=count_tokens(request), output_tokens=count_tokens(self.text))


def run_job(client, app, monkeypatch, agent, request="Plan a soldering workshop"):
    """Run a paid job on agent; return its stored state and every frame its channel carried."""
    job = client.post("/api/jobs", json={"request": request}).json
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    job = client.get(f"/api/jobs/{job['jobId']}").json
    with app.app_context():
        stored = db.session.get(Job, job["jobId"])
        pubsub = app.extensions["redis"].pubsub()
        pubsub.subscribe(events.channel(stored))
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    monkeypatch.setattr(runner, "get_agent", lambda: agent)
    client.post(f"/api/dev/pay/{job['workInvoice']['paymentHash']}")
    wait_for_jobs()
    frames = []
    while not frames or frames[-1]["type"] != "job_complete":
        message = pubsub.get_message(timeout=5)
        assert message is not None, f"the stream ended without a final panel after {len(frames)} frames"
        if message["type"] == "message":
            frames.append(json.loads(message["data"]))
    pubsub.close()
    return client.get(f"/api/jobs/{job['jobId']}").json, frames


def output_tokens(frames):
    return [int(re.search(r'data-output-tokens="(\d+)"', f["data"]).group(1))
            for f in frames if f["type"] == "job_progress"]


def answer(frames):
    return "".join(f["text"] for f in frames if "text" in f)


@pytest.mark.parametrize("script", [
    [" word"] * 300,  # one burst, no pause: coalesced into the first and the last frame
    [" word", 0.002] * 60 + [" tail", " end"],  # a steady stream, then a last burst
    [" x"] * 5 + [0.05] + ["'", "s", "\n", "  ", "\n"],  # the last deltas re-merge tokens
    [0.01] + ["日本語", "👨‍👩", "‍👧"],  # nothing, then multi-byte text at the very end
])
def test_coalescing_never_drops_the_final_frame(make_app, monkeypatch, script):
    app = make_app(TICKER_MAX_FPS=20)
    agent = ScriptedAgent(script)
    job, frames = run_job(app.test_client(), app, monkeypatch, agent)
    assert job["state"] == "complete" and job["result"] == agent.text
    counts = output_tokens(frames)
    assert counts == sorted(counts)
    # The last ticker frame has the exact count of the whole answer, and the answer frames
    # together are the whole answer, however the deltas were coalesced.
    assert counts[-1] == count_tokens(agent.text) == job["costLedger"]["outputTokens"]
    assert answer(frames) == agent.text
    assert frames[-1]["type"] == "job_complete"


def test_a_burst_of_deltas_is_coalesced_into_few_frames(make_app, monkeypatch):
    # One frame a second at most: 300 deltas with the hub yielded between them arrive well
    # within one interval, so the ticker sends its opening frame, a burst, and the last.
    app = make_app(TICKER_MAX_FPS=1)
    agent = ScriptedAgent([step for _ in range(300) for step in (" word", 0.0)])
    job, frames = run_job(app.test_client(), app, monkeypatch, agent)
    counts = output_tokens(frames)
    assert len(counts) <= ticker.BURST_FRAMES + 3 and counts[-1] == 300 == count_tokens(job["result"])


def test_the_first_delta_after_a_quiet_spell_is_published_at_once(make_app, monkeypatch):
    # Throttled to one frame a second, a ticker that published on a fixed beat would show the
    # first delta up to a second late; the live state, read by the provider before its next
    # delta, already has it. After a burst of BURST_FRAMES frames, the next delta waits.
    app = make_app(TICKER_MAX_FPS=1)
    seen = []
    holder = {}

    def look():
        with app.app_context():
            state = live.read(db.session.get(Job, holder["job_id"]))
            seen.append((state.output_tokens, state.text))

    words = [" Hello", " world", " again", " and", " again"][:ticker.BURST_FRAMES + 1]
    agent = ScriptedAgent([step for word in words for step in (word, 0.02, look)])
    original = runner.execute

    def execute(job_id):
        holder["job_id"] = job_id
        return original(job_id)

    monkeypatch.setattr(runner, "execute", execute)
    job, frames = run_job(app.test_client(), app, monkeypatch, agent)
    burst = "".join(words[:-1])
    assert seen == [(n + 1, "".join(words[:n + 1])) for n in range(ticker.BURST_FRAMES)] + [
        (ticker.BURST_FRAMES, burst)]
    assert output_tokens(frames)[-1] == len(words) and answer(frames) == "".join(words)


def test_a_stop_read_with_a_frame_stops_the_job(make_app, monkeypatch):
    app = make_app(TICKER_MAX_FPS=50)
    holder = {}

    def stop():
        with app.app_context():
            events.request_stop(db.session.get(Job, holder["job_id"]))

    agent = ScriptedAgent([" one", 0.05, stop, " two", 0.2, " three", 0.2, " four"], usage=False)
    original = runner.execute

    def execute(job_id):
        holder["job_id"] = job_id
        return original(job_id)

    monkeypatch.setattr(runner, "execute", execute)
    job, frames = run_job(app.test_client(), app, monkeypatch, agent)
    assert job["state"] == "complete" and job["result"].startswith(" one two")
    assert "four" not in job["result"]
    assert output_tokens(frames)[-1] == count_tokens(job["result"])


def test_a_streaming_job_holds_no_database_connection(make_app, monkeypatch):
    # Hundreds of jobs stream at once; a connection held by each would drain the pool.
    app = make_app()
    held = []

    def look():
        with app.app_context():
            held.append(db.engine.pool.checkedout())

    agent = ScriptedAgent([" one", look, 0.01, " two", look])
    job, frames = run_job(app.test_client(), app, monkeypatch, agent)
    assert held == [0, 0] and job["state"] == "complete" and job["costLedger"]["outputTokens"] == 2


class _Job:
    id, channel = 1, "c"


class _Progress:
    """A job's side of the ticker, counting the frames the ticker publishes for it."""

    def __init__(self, name):
        self.name, self.job, self.frames, self.ticker = name, _Job(), 0, None

    def frame(self):
        return [b"PING"], 0

    def published(self, length):
        self.frames += 1

    def unpublished(self):
        pass


def test_a_job_out_of_frame_credit_gets_its_frame_while_others_keep_ticking(app, monkeypatch):
    # A job that used up its credits waits for the next one; the ticks of busier jobs, more
    # often than that wait, must not keep pushing its turn back.
    from app import publisher
    monkeypatch.setattr(publisher, "send", lambda commands, raise_replies=True: [
        0 if b"EXISTS" in command else 1 for command in commands])  # no Stop; every frame lands
    app.config["TICKER_MAX_FPS"] = 20
    with app.app_context():
        clock = ticker.Ticker(app)
        waiting, busy = _Progress("waiting"), _Progress("busy")
        for progress in (waiting, busy):
            clock.join(progress, gevent.getcurrent())
        clock.credits[waiting][0] = 0.0  # it has just sent its burst
        clock.mark(waiting)
        for _ in range(100):  # half a second of another job ticking every 5 ms
            clock.mark(busy)
            gevent.sleep(0.005)
        clock.leave(waiting)
        clock.leave(busy)
    assert busy.frames >= 5 and waiting.frames == 1


def test_a_batch_that_fails_unexpectedly_does_not_end_the_ticker(app, monkeypatch):
    from app import publisher
    calls = []

    def send(commands, raise_replies=True):
        calls.append(len(commands))
        if len(calls) == 1:
            raise RuntimeError("a fault nobody foresaw")
        return [0 if b"EXISTS" in command else 1 for command in commands]

    monkeypatch.setattr(publisher, "send", send)
    monkeypatch.setattr(ticker, "PUBLISH_RETRY_SECONDS", 0.01)
    with app.app_context():
        clock = ticker.Ticker(app)
        job = _Progress("job")
        clock.join(job, gevent.getcurrent())
        clock.mark(job)
        gevent.sleep(0.05)  # the first batch fails
        for _ in range(5):
            clock.mark(job)
            gevent.sleep(0.06)
        clock.leave(job)
    assert job.frames >= 3  # the batches after the failed one went out
