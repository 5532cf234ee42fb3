"""Whole jobs with Timmy on a real provider's wire format (a loopback server): billing, faults, Stop."""
import html
import json
import re
import threading
from contextlib import contextmanager
from decimal import Decimal

import pytest
import requests

from app import config, jobs, pricing
from app.agent import remote
from app.metering import count_tokens
from conftest import LiveServer, wait_for_jobs
from providers import Hangup, ProviderServer, Reply, Send, Sleep
from test_integration import Viewer, answer_of, attr, start_job
from wire import (anthropic_error_body, anthropic_error_event, anthropic_frames, data,
                  openai_error_body, openai_frames)

MODELS = {"anthropic": ("claude-sonnet-4-6", "claude-haiku-4-5"),
          "openai": ("gpt-5.4-mini", "gpt-5.4-nano")}  # (work, eval): both priced by default
VERDICT = '{"accepted": true, "reason": "A tidy little job.", "estimated_output_tokens": 400}'
REQUEST = "Explain how to tin a soldering iron"
CHARGED_ONLY = " You are charged only for what was produced."


@pytest.fixture
def server():
    server = ProviderServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["anthropic", "openai"])
def kind(request):
    return request.param


def settings(kind, server, stall=2):
    """Timmy on this provider, served by the loopback server."""
    work, cheap = MODELS[kind]
    return {"AGENT": kind, "PROVIDER_BASE_URL": server.url + ("/v1" if kind == "openai" else ""),
            "PROVIDER_API_KEY": "test-key", "WORK_MODEL": work, "EVAL_MODEL": cheap,
            "CHAT_MODEL": cheap, "PROVIDER_STALL_SECONDS": stall}


def frames(kind, pieces, **usage):
    return (anthropic_frames if kind == "anthropic" else openai_frames)(pieces, **usage)


def head(kind, whole):
    """The frames up to and including the first text delta."""
    return whole[:4] if kind == "anthropic" else whole[:2]


def paced(whole, pause):
    """A reply that sends its frames one by one, pause seconds apart."""
    return Reply(whole[:1] + [step for frame in whole[1:] for step in (Sleep(pause), frame)])


def verdict(kind):
    return Reply(frames(kind, [VERDICT[:20], VERDICT[20:]]))


def charge(model, btc_usd, input_tokens, output_tokens, cache_read=0, cache_write=0):
    """What the Workshop must bill for this usage, at its configured margin and infra share."""
    c = config.from_environment()
    tariff = pricing.Tariff(c["MODEL_PRICES"], c["MARGIN_PCT"], c["INFRA_USD_PER_REQUEST"])
    return pricing.charge_msat(tariff, model, input_tokens, output_tokens, Decimal(btc_usd),
                               cache_read, cache_write)


def assert_refund_computed(ledger):
    owed = (ledger["paidMsat"] - ledger["actualMsat"]) // 1000 * 1000
    assert ledger["refundOwedMsat"] == max(0, owed) >= 0


def run_job(client):
    """Create a job, pay both invoices, let Timmy work; return the job and the quote it was paid on."""
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    quoted = client.get(f"/api/jobs/{job['jobId']}").json
    assert quoted["state"] == "awaiting_work_payment", quoted
    client.post(f"/api/dev/pay/{quoted['workInvoice']['paymentHash']}")
    worker = jobs.running[job["jobId"]]
    wait_for_jobs()  # joins the job's greenlet: a hang fails here
    assert worker.dead and not jobs.running  # the greenlet is freed
    return client.get(f"/api/jobs/{job['jobId']}").json, quoted["pricingBreakdown"]


# What each provider reports, and what the ledger must record of it.
REPORTED = {
    "anthropic": ({"input_tokens": 40, "cache_read": 1_800, "cache_write": 400, "output_counts": (9, 23)},
                  {"inputTokens": 40, "cacheReadTokens": 1_800, "cacheWriteTokens": 400,
                   "outputTokens": 23, "reasoningTokens": 0}),
    "openai": ({"prompt_tokens": 1_240, "cached_tokens": 1_024, "completion_tokens": 310,
                "reasoning_tokens": 280},
               {"inputTokens": 216, "cacheReadTokens": 1_024, "cacheWriteTokens": 0,
                "outputTokens": 310, "reasoningTokens": 280}),
}


def test_a_whole_job_is_billed_on_the_providers_usage(make_app, server, kind):
    reported, recorded = REPORTED[kind]
    pieces = ["Heat the tip, ", "melt a little solder on it, ", "and wipe it on brass wool."]
    server.queue(verdict(kind), Reply(frames(kind, pieces, **reported)))
    client = make_app(**settings(kind, server)).test_client()
    job, quote = run_job(client)
    assert job["state"] == "complete" and job["result"] == "".join(pieces)
    ledger = job["costLedger"]
    assert {name: ledger[name] for name in recorded} == recorded
    assert ledger["usageSource"] == "provider" and ledger["btcUsd"] == quote["btcUsd"]
    assert ledger["actualMsat"] == charge(
        MODELS[kind][0], quote["btcUsd"], recorded["inputTokens"], recorded["outputTokens"],
        recorded["cacheReadTokens"], recorded["cacheWriteTokens"])
    assert_refund_computed(ledger)
    evaluation, work = server.received
    assert (evaluation.body["model"], work.body["model"]) == (MODELS[kind][1], MODELS[kind][0])
    # Once the job is over, neither Stop route has anything to stop.
    assert client.post(f"/api/jobs/{job['jobId']}/stop").status_code == 409
    assert client.post(f"/jobs/{job['jobId']}/stop").status_code == 409


def fault(kind, case):
    """Return the work reply for a fault, and the message a visitor must be given for it."""
    whole = frames(kind, ["First", " second"])
    first, rest = head(kind, whole), whole[len(head(kind, whole)):]
    reported = remote.OVERLOADED if kind == "anthropic" else remote.PROVIDER_FAILED
    if case == "error status":
        body = anthropic_error_body() if kind == "anthropic" else openai_error_body()
        return Reply(status=529 if kind == "anthropic" else 500, body=body), reported
    if case == "hangup":
        return Reply(first + [Hangup()]), remote.LOST
    if case == "stall":
        return Reply(first + [Sleep(30)] + rest), remote.STALLED
    if case == "malformed chunk":
        broken = b'event: content_block_delta\ndata: {"type": "content_bl\n\n' if kind == "anthropic" \
            else b'data: {"id": "chatcmpl-C9y", "choi\n\n'
        return Reply(first + [Send(broken)]), remote.UNREADABLE
    assert case == "error event"
    return Reply(first + [anthropic_error_event() if kind == "anthropic" else data(openai_error_body())]), reported


@pytest.mark.parametrize("case", ["error status", "hangup", "stall", "malformed chunk", "error event"])
def test_a_provider_fault_fails_the_job_plainly_and_settles_what_was_produced(make_app, server, kind, case):
    reply, message = fault(kind, case)
    server.queue(verdict(kind), reply)
    client = make_app(**settings(kind, server, stall=1)).test_client()
    job, quote = run_job(client)
    partial = "" if case == "error status" else "First"
    assert job["state"] == "failed" and job["result"] == partial
    assert job["errorMessage"] == message + CHARGED_ONLY
    assert not re.search(r"Traceback|Error\b|Exception|[a-z][A-Z]|[_<>{}]", job["errorMessage"])
    ledger = job["costLedger"]
    # Nothing before the first token is billed as tokens; after it, the Workshop's exact count is.
    tokens = (quote["inputTokens"], count_tokens(partial)) if partial else (0, 0)
    assert ledger["usageSource"] == "estimate"
    assert (ledger["inputTokens"], ledger["outputTokens"]) == tokens
    assert ledger["actualMsat"] == charge(MODELS[kind][0], quote["btcUsd"], *tokens)
    assert ledger["paidMsat"] == job["workInvoice"]["amountSats"] * 1000
    assert_refund_computed(ledger)
    page = html.unescape(client.get(f"/jobs/{job['jobId']}").get_data(as_text=True))
    assert 'class="final" sse-swap="job_complete"' in page
    assert f'data-actual-msat="{ledger["actualMsat"]}"' in page and job["errorMessage"] in page
    assert ("Refund owed" in page) == bool(ledger["refundOwedMsat"])


def without_usage(whole):
    """Anthropic frames with every usage report taken out, as some compatible servers send them."""
    stripped = []
    for frame in whole:
        event, _, body = frame.data.decode().partition("data: ")
        payload = json.loads(body)
        payload.pop("usage", None)
        payload.get("message", {}).pop("usage", None)
        stripped.append(Send(f"{event}data: {json.dumps(payload)}\n\n".encode()))
    return stripped


def test_a_stream_without_usage_is_billed_on_the_workshops_exact_count(make_app, server, kind):
    pieces = ["Tin the tip ", "before every session, ", "and keep it tinned. 🔥"]
    work = (without_usage(anthropic_frames(pieces)) if kind == "anthropic"
            else openai_frames(pieces, include_usage=False))
    server.queue(verdict(kind), Reply(work))
    job, quote = run_job(make_app(**settings(kind, server)).test_client())
    assert job["state"] == "complete" and job["result"] == "".join(pieces)
    ledger = job["costLedger"]
    assert ledger["usageSource"] == "estimate"
    assert ledger["outputTokens"] == count_tokens(job["result"]) > 0
    assert ledger["inputTokens"] == quote["inputTokens"] > 0
    assert ledger["actualMsat"] == charge(MODELS[kind][0], quote["btcUsd"], ledger["inputTokens"],
                                          ledger["outputTokens"])


@contextmanager
def live_job(tmp_path, redis_url, kind, server, text):
    """A gunicorn Workshop on this provider, a job there paid for, and a viewer of its stream."""
    env = {name: str(value) for name, value in settings(kind, server).items()}
    live = LiveServer(tmp_path, redis_url, **env).start()
    session = requests.Session()
    try:
        job = start_job(live, session, text)
        viewer = Viewer(session, live.url + job["streamUrl"])
        viewer.start()
        assert viewer.connected.wait(10)
        server.finished.clear()  # the verdict's stream has finished; what follows is the work's
        session.post(f"{live.url}/api/dev/pay/{job['workInvoice']['paymentHash']}").raise_for_status()
        yield live, session, job, viewer
    finally:
        session.close()  # an idle keep-alive connection would hold up gunicorn's graceful stop
        live.stop()


def test_stop_cancels_the_provider_and_settles_what_was_written(tmp_path, redis_url, server, kind):
    pieces = [f" Step {i}: clean, heat, tin." for i in range(300)]
    server.queue(verdict(kind), paced(frames(kind, pieces), 0.05))
    with live_job(tmp_path, redis_url, kind, server, "Every step of a kit radio") as (live, session, job,
                                                                                      viewer):
        for _ in range(400):
            if answer_of(viewer.events):
                break
            threading.Event().wait(0.05)
        assert answer_of(viewer.events), "no text streamed"
        page = session.get(f"{live.url}/jobs/{job['jobId']}").text
        form = re.search(rf'action="/jobs/{job["jobId"]}/stop".*?name="csrf_token" value="([^"]+)"',
                         page, re.S)
        assert form and "Stop Timmy" in page  # the page offers the Stop button while Timmy works
        stop = session.post(f"{live.url}/api/jobs/{job['jobId']}/stop")
        assert stop.status_code == 202 and stop.json()["stopping"] is True
        viewer.join(60)
        assert server.disconnected.wait(10), "the provider never saw the request cancelled"
        assert not server.finished.is_set()
        final = session.get(f"{live.url}/api/jobs/{job['jobId']}").json()
        result, whole = final["result"], "".join(pieces)
        assert final["state"] == "complete" and final["reason"].startswith("You stopped Timmy")
        assert result and whole.startswith(result) and result != whole
        ledger = final["costLedger"]
        assert ledger["usageSource"] == "estimate" and ledger["outputTokens"] == count_tokens(result)
        assert ledger["inputTokens"] == job["pricingBreakdown"]["inputTokens"]
        assert ledger["actualMsat"] == charge(MODELS[kind][0], ledger["btcUsd"], ledger["inputTokens"],
                                              ledger["outputTokens"])
        assert_refund_computed(ledger)
        last, panel = viewer.events[-1]
        assert last == "job_complete" and attr(panel, "data-actual-msat") == ledger["actualMsat"]
        assert answer_of(viewer.events) == result  # the viewer saw exactly what was billed
        again = session.post(f"{live.url}/jobs/{job['jobId']}/stop", data={"csrf_token": form.group(1)})
        assert again.status_code == 409  # the button's route: nothing left to stop


def test_reasoning_before_the_answer_shows_timmy_thinking(tmp_path, redis_url, server, kind):
    thoughts = ["Which flux", " suits", " a beginner?", " Rosin core,", " surely."]
    reasoning = {"thinking": thoughts} if kind == "anthropic" else {"reasoning": thoughts}
    server.queue(verdict(kind), paced(frames(kind, ["Use rosin-core ", "solder."], **reasoning), 0.2))
    with live_job(tmp_path, redis_url, kind, server, "Which flux for a beginner?") as (live, session, job,
                                                                                      viewer):
        viewer.join(60)
        progress = [data for event, data in viewer.events if event == "job_progress"]
        thinking = [frame for frame in progress if ">Timmy is thinking… · ~" in frame]
        assert thinking, progress
        assert all(attr(frame, "data-output-tokens") == 0 for frame in thinking)
        assert "Timmy is thinking" not in progress[-1] and viewer.events[-1][0] == "job_complete"
        final = session.get(f"{live.url}/api/jobs/{job['jobId']}").json()
        assert final["state"] == "complete" and final["result"] == "Use rosin-core solder."
