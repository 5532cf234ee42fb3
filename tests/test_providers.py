"""Timmy on real providers' wire formats: Anthropic Messages and OpenAI chat completions, over loopback."""
import threading
from decimal import Decimal

import pytest

from app import config, pricing
from app.agent import Evaluation, ProviderError, TextDelta, Thinking, Usage, build, remote
from app.agent.prompts import MalformedEvaluation, parse_evaluation
from app.config import DEFAULT_MODEL_PRICES
from app.metering import count_tokens

from providers import Hangup, ProviderServer, Reply, Send, Sleep
from wire import (anthropic_error_body, anthropic_error_event, anthropic_frames, chunk, data,
                  openai_error_body, openai_frames, sse)

MODELS = {"anthropic": ("claude-sonnet-4-6", "claude-haiku-4-5"), "openai": ("gpt-5.4-mini", "gpt-5.4-nano")}
VISITOR_MESSAGES = {remote.OVERLOADED, remote.RATE_LIMITED, remote.MISCONFIGURED, remote.REFUSED,
                    remote.PROVIDER_FAILED, remote.STALLED, remote.LOST, remote.UNREADABLE,
                    remote.REPORTED, remote.NO_VERDICT}
PRICES = {m: {k: Decimal(v) for k, v in r.items()} for m, r in DEFAULT_MODEL_PRICES.items()}
TARIFF = pricing.Tariff(PRICES, Decimal(0), Decimal(0))  # no margin or infra: token cost alone
BTC_USD = Decimal(100_000)


@pytest.fixture
def server():
    server = ProviderServer().start()
    yield server
    server.stop()


class Provider:
    """One provider under test: its agent, pointed at the loopback server, and its wire format."""

    def __init__(self, kind, server):
        self.kind, self.server = kind, server

    def agent(self, **overrides):
        work, cheap = MODELS[self.kind]
        return build({"AGENT": self.kind, "PROVIDER_API_KEY": "test-key", "WORK_MODEL": work,
                      "EVAL_MODEL": cheap, "CHAT_MODEL": cheap, "PROVIDER_STALL_SECONDS": 5,
                      "MAX_OUTPUT_TOKENS": 4096,
                      "PROVIDER_BASE_URL": self.server.url + ("" if self.kind == "anthropic" else "/v1"),
                      **overrides})

    def frames(self, pieces, output_tokens=12):
        if self.kind == "anthropic":
            return anthropic_frames(pieces, output_counts=(output_tokens,))
        return openai_frames(pieces, completion_tokens=output_tokens)

    def head(self, frames):
        """Return the frames up to and including the first text delta."""
        return frames[:4] if self.kind == "anthropic" else frames[:2]

    def error_reply(self, status):
        if self.kind == "anthropic":
            kind = "overloaded_error" if status == 529 else "api_error"
            message = "Overloaded" if status == 529 else "Internal server error"
            return Reply(status=status, body=anthropic_error_body(kind, message))
        return Reply(status=status, body=openai_error_body())

    def error_event(self):
        return anthropic_error_event() if self.kind == "anthropic" else data(openai_error_body())


@pytest.fixture(params=["anthropic", "openai"])
def provider(request, server):
    return Provider(request.param, server)


def drain(stream, limit=15):
    """Consume a stream in a thread; return (items, error). A stream that hangs fails the test."""
    out = {"items": [], "error": None}

    def run():
        try:
            for item in stream:
                out["items"].append(item)
        except Exception as error:  # noqa: BLE001 - the test asserts on its type
            out["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the stream hung"
    return out["items"], out["error"]


def text_of(items):
    return "".join(item.text for item in items if isinstance(item, TextDelta))


def usage_of(items):
    usages = [item for item in items if isinstance(item, Usage)]
    assert len(usages) == 1 and items[-1] is usages[0]
    return usages[0]


def charge(usage, model):
    return pricing.charge_msat(TARIFF, model, usage.input_tokens, usage.output_tokens, BTC_USD,
                               usage.cache_read_tokens, usage.cache_write_tokens)


def usd(model, **tokens):
    rates = PRICES[model]
    return sum(count * rates[kind] for kind, count in tokens.items()) / 1_000_000


# OpenAI-compatible usage


def test_openai_requests_usage_in_the_stream(server):
    server.queue(Reply(openai_frames(["Hi"])))
    drain(Provider("openai", server).agent().stream("Plan a workshop"))
    sent = server.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["model"] == "gpt-5.4-mini" and sent.body["max_tokens"] == 4096
    assert [m["role"] for m in sent.body["messages"]] == ["system", "user"]
    assert sent.body["messages"][1]["content"] == "Plan a workshop"


def test_openai_usage_chunk_with_empty_choices_is_the_usage(server):
    server.queue(Reply(openai_frames(["Hello", ", world"], prompt_tokens=30, completion_tokens=12)))
    items, error = drain(Provider("openai", server).agent().stream("hi"))
    assert error is None and text_of(items) == "Hello, world"
    assert usage_of(items) == Usage(input_tokens=30, output_tokens=12)


def test_openai_cached_tokens_are_priced_at_the_cache_rate_only(server):
    server.queue(Reply(openai_frames(["ok"], prompt_tokens=10_000, cached_tokens=8_000,
                                     completion_tokens=12)))
    usage = usage_of(drain(Provider("openai", server).agent().stream("hi"))[0])
    assert usage == Usage(input_tokens=2_000, output_tokens=12, cache_read_tokens=8_000)
    expected = usd("gpt-5.4-mini", input=2_000, cache_read=8_000, output=12)
    assert charge(usage, "gpt-5.4-mini") == pricing.usd_to_msat(expected, BTC_USD)
    all_full_rate = pricing.usd_to_msat(usd("gpt-5.4-mini", input=10_000, output=12), BTC_USD)
    assert charge(usage, "gpt-5.4-mini") < all_full_rate


def test_openai_reasoning_tokens_are_billed_as_output(server):
    server.queue(Reply(openai_frames(["42"], completion_tokens=500, reasoning_tokens=480)))
    usage = usage_of(drain(Provider("openai", server).agent().stream("hi"))[0])
    assert usage.output_tokens == 500 and usage.reasoning_tokens == 480
    expected = usd("gpt-5.4-mini", input=30, output=500)
    assert charge(usage, "gpt-5.4-mini") == pricing.usd_to_msat(expected, BTC_USD)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_openai_reasoning_before_text_is_thinking(server, field):
    frames = openai_frames(["Answer"], reasoning=["Let me", " think"], reasoning_field=field)
    late = data(chunk([{"index": 0, "delta": {"content": None, field: "more"}, "finish_reason": None}]))
    server.queue(Reply(frames[:4] + [late] + frames[4:]))
    items, error = drain(Provider("openai", server).agent().stream("hi"))
    assert error is None
    assert [type(i) for i in items] == [Thinking, Thinking, TextDelta, Usage]


def test_openai_counts_are_exact_only_on_openai_itself(server):
    local = Provider("openai", server).agent()
    assert local.approximate_count and local.encoding == "o200k_base"
    official = Provider("openai", server).agent(PROVIDER_BASE_URL="https://api.openai.com/v1")
    assert official.official and not official.approximate_count


# Anthropic usage


def test_anthropic_request_and_input_usage_from_message_start(server):
    server.queue(Reply(anthropic_frames(["Hi", " there"], input_tokens=25, output_counts=(7,))))
    agent = Provider("anthropic", server).agent()
    items, error = drain(agent.stream("Plan a workshop"))
    assert error is None and text_of(items) == "Hi there"
    assert usage_of(items) == Usage(input_tokens=25, output_tokens=7)
    sent = server.received[0]
    assert sent.path == "/v1/messages" and sent.headers["authorization"] == "Bearer test-key"
    assert "anthropic-version" in sent.headers
    assert sent.body["stream"] is True and sent.body["max_tokens"] == 4096
    assert sent.body["model"] == "claude-sonnet-4-6" and sent.body["system"].startswith("You are Timmy")
    assert sent.body["messages"] == [{"role": "user", "content": "Plan a workshop"}]
    assert agent.approximate_count and agent.encoding == "o200k_base"


def test_anthropic_message_delta_is_cumulative_the_latest_wins(server):
    server.queue(Reply(anthropic_frames(["a", "b"], output_counts=(10, 25))))
    usage = usage_of(drain(Provider("anthropic", server).agent().stream("hi"))[0])
    assert usage.output_tokens == 25  # not 35


def test_anthropic_cache_tokens_are_reported_and_priced(server):
    server.queue(Reply(anthropic_frames(["ok"], input_tokens=50, cache_read=1_800, cache_write=400)))
    usage = usage_of(drain(Provider("anthropic", server).agent().stream("hi"))[0])
    assert usage == Usage(input_tokens=50, output_tokens=15, cache_read_tokens=1_800, cache_write_tokens=400)
    expected = usd("claude-sonnet-4-6", input=50, cache_read=1_800, cache_write=400, output=15)
    assert charge(usage, "claude-sonnet-4-6") == pricing.usd_to_msat(expected, BTC_USD)


def test_anthropic_ping_and_unknown_events_are_ignored(server):
    frames = anthropic_frames(["one", " two"])
    odd = [sse("ping", {"type": "ping"}), sse("brand_new_event", {"type": "brand_new_event", "x": {"y": 1}})]
    server.queue(Reply(frames[:1] + odd + frames[1:4] + odd + frames[4:]))
    items, error = drain(Provider("anthropic", server).agent().stream("hi"))
    assert error is None and text_of(items) == "one two" and usage_of(items).output_tokens == 15


def test_anthropic_thinking_before_text_is_thinking(server):
    server.queue(Reply(anthropic_frames(["Answer"], thinking=["Let me", " think"])))
    items, error = drain(Provider("anthropic", server).agent().stream("hi"))
    assert error is None
    assert [type(i) for i in items] == [Thinking] * 3 + [TextDelta, Usage]  # start + two deltas


# Streaming, whichever the provider


def test_a_20000_token_answer_streams_intact(provider):
    words = [f"{w}{i % 97}" for i in range(12_000) for w in (" gear", " and solder")]
    text = "".join(words)
    assert count_tokens(text) >= 20_000
    provider.server.queue(Reply(provider.frames(words, output_tokens=count_tokens(text))))
    items, error = drain(provider.agent().stream("a long job"), limit=60)
    assert error is None and text_of(items) == text
    assert usage_of(items).output_tokens == count_tokens(text)


def test_an_emoji_split_between_two_sends_arrives_intact(provider):
    frames = provider.frames(["Tools: ", "🛠️ and 👩‍🔧", " done"])
    at = next(i for i, f in enumerate(frames) if "🛠".encode() in f.data)
    frame = frames[at].data
    frames[at] = Send(frame, split_at=frame.index("🛠".encode()) + 2)  # two of its four bytes
    provider.server.queue(Reply(frames))
    items, error = drain(provider.agent().stream("hi"))
    assert error is None and text_of(items) == "Tools: 🛠️ and 👩‍🔧 done"


@pytest.mark.parametrize("status, message", [(529, remote.OVERLOADED), (500, remote.PROVIDER_FAILED)])
def test_an_error_status_before_the_first_token(provider, status, message):
    provider.server.queue(provider.error_reply(status))
    items, error = drain(provider.agent().stream("hi"))
    assert items == [] and isinstance(error, ProviderError) and str(error) == message


def fault_cases():
    return {
        "disconnect": (lambda p, f: p.head(f) + [Hangup()], remote.LOST),
        "clean end, unfinished": (lambda p, f: p.head(f), remote.LOST),
        "malformed chunk": (lambda p, f: p.head(f) + [Send(b'data: {"type": "content_block_delta", "ind\n\n')]
                            if p.kind == "openai" else
                            p.head(f) + [Send(b'event: content_block_delta\ndata: {"type": "content_bl\n\n')],
                            remote.UNREADABLE),
        "error event": (lambda p, f: p.head(f) + [p.error_event()], None),
        "stall": (lambda p, f: p.head(f) + [Sleep(30)] + f[len(p.head(f)):], remote.STALLED),
    }


@pytest.mark.parametrize("case", list(fault_cases()))
def test_a_fault_mid_stream_is_a_provider_error_for_visitors(provider, case):
    script, message = fault_cases()[case]
    provider.server.queue(Reply(script(provider, provider.frames(["First", " second"]))))
    # The script sleeps 30 s: only the stall timeout ends the call with STALLED instead.
    items, error = drain(provider.agent(PROVIDER_STALL_SECONDS=1).stream("hi"))
    assert text_of(items) == "First"  # what streamed before the fault still reaches the runner
    assert isinstance(error, ProviderError) and str(error) in VISITOR_MESSAGES
    expected = message or (remote.OVERLOADED if provider.kind == "anthropic" else remote.PROVIDER_FAILED)
    assert str(error) == expected


def test_a_stall_before_the_response_is_a_provider_error(provider):
    provider.server.queue(Reply([Sleep(30)] + provider.frames(["late"])))
    # The script sleeps 30 s: only the stall timeout ends the call with STALLED instead.
    items, error = drain(provider.agent(PROVIDER_STALL_SECONDS=1).stream("hi"))
    assert str(error) == remote.STALLED and text_of(items) == ""


def test_closing_the_stream_early_closes_the_connection(provider):
    pieces = [f" piece{i}" for i in range(300)]
    frames = provider.frames(pieces)
    head = provider.head(frames)
    paced = [step for frame in frames[len(head):] for step in (Sleep(0.02), frame)]
    provider.server.queue(Reply(head + paced))
    stream = provider.agent().stream("hi")
    assert next(item for item in stream if isinstance(item, TextDelta)).text == " piece0"
    stream.close()  # what a Stop button does
    assert provider.server.disconnected.wait(5), "the server never saw the client leave"
    assert not provider.server.finished.is_set()


# Evaluation and chat


def verdict(provider, text):
    return Reply(provider.frames([text[:10], text[10:]]))


def test_evaluation_reads_a_fenced_verdict(provider):
    provider.server.queue(verdict(provider, '```json\n{"accepted": true, "reason": "Doable.", '
                                            '"estimated_output_tokens": 800}\n```'))
    assert provider.agent().evaluate("Plan a workshop") == Evaluation(True, "Doable.", 800)
    sent = provider.server.received[0].body
    assert sent["model"] == MODELS[provider.kind][1]
    assert "JSON" in (sent.get("system") or sent["messages"][0]["content"])


def test_evaluation_retries_a_malformed_verdict_once(provider):
    provider.server.queue(verdict(provider, "Sure! I'd be glad to help with that."),
                          verdict(provider, '{"accepted": false, "reason": "Not a job.", '
                                            '"estimated_output_tokens": 0}'))
    assert provider.agent().evaluate("hmm") == Evaluation(False, "Not a job.", 0)
    assert len(provider.server.received) == 2


def test_evaluation_fails_after_two_malformed_verdicts(provider):
    good = '{"accepted": true, "reason": "x", "estimated_output_tokens": 5}'
    provider.server.queue(verdict(provider, '{"accepted": "yes"}'), verdict(provider, "no JSON at all"),
                          verdict(provider, good))
    with pytest.raises(ProviderError, match="Timmy could not evaluate"):
        provider.agent().evaluate("hmm")
    assert len(provider.server.received) == 2  # once more, not again and again


def test_evaluation_estimate_stays_within_the_job_cap(provider):
    provider.server.queue(verdict(provider, '{"accepted": true, "reason": "Big.", '
                                            '"estimated_output_tokens": 999999}'))
    assert provider.agent(MAX_OUTPUT_TOKENS=2000).evaluate("a novel").estimated_output_tokens == 2000


def test_chat_asks_for_a_short_reply_from_the_chat_model(provider):
    provider.server.queue(Reply(provider.frames(["Hi!"])))
    items, error = drain(provider.agent().chat("hello"))
    assert error is None and text_of(items) == "Hi!"
    sent = provider.server.received[0].body
    assert sent["max_tokens"] == 150 and sent["model"] == MODELS[provider.kind][1]


def test_a_job_stream_can_be_capped_below_the_maximum(provider):
    provider.server.queue(Reply(provider.frames(["x"])))
    drain(provider.agent().stream("hi", max_tokens=900))
    assert provider.server.received[0].body["max_tokens"] == 900


def test_a_verdict_is_read_through_chatter_and_checked():
    assert parse_evaluation('Here you go: {"accepted": true, "reason": "Fine.", '
                            '"estimated_output_tokens": 0} Thanks!', 4096) == Evaluation(True, "Fine.", 1)
    for bad in ('{"accepted": true, "reason": "x", "estimated_output_tokens": true}',
                '{"accepted": 1, "reason": "x", "estimated_output_tokens": 5}', "[]", "{", ""):
        with pytest.raises(MalformedEvaluation):
            parse_evaluation(bad, 4096)


# Configuration


@pytest.mark.parametrize("agent, url, work, cheap", [
    ("demo", "", "timmy-demo", "timmy-demo"),
    ("anthropic", "https://api.anthropic.com", "claude-sonnet-4-6", "claude-haiku-4-5"),
    ("openai", "https://api.openai.com/v1", "gpt-5.4-mini", "gpt-5.4-nano"),
])
def test_models_and_url_default_by_agent(monkeypatch, agent, url, work, cheap):
    for name in ("PROVIDER_BASE_URL", "WORK_MODEL", "EVAL_MODEL", "CHAT_MODEL", "MODEL_PRICES",
                 "PROVIDER_STALL_SECONDS", "MAX_OUTPUT_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENT", agent)
    settings = config.from_environment()
    assert (settings["PROVIDER_BASE_URL"], settings["WORK_MODEL"]) == (url, work)
    assert settings["EVAL_MODEL"] == settings["CHAT_MODEL"] == cheap
    assert settings["PROVIDER_STALL_SECONDS"] == 30 and settings["MAX_OUTPUT_TOKENS"] == 4096
    assert {work, cheap} <= set(settings["MODEL_PRICES"])  # every default model can be quoted


def test_an_unknown_agent_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AGENT", "gemini")
    with pytest.raises(RuntimeError, match="Unknown AGENT 'gemini'.*demo, anthropic, openai"):
        build(config.from_environment())


@pytest.mark.parametrize("agent", ["anthropic", "openai"])
def test_a_provider_api_without_a_key_is_a_clear_error(monkeypatch, agent):
    monkeypatch.setenv("AGENT", agent)
    monkeypatch.delenv("PROVIDER_BASE_URL", raising=False)
    monkeypatch.delenv("PROVIDER_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="PROVIDER_API_KEY"):
        build(config.from_environment())


def test_a_work_model_without_a_price_stops_the_start(make_app):
    # Otherwise every visitor would pay the evaluation fee for a job that can't be quoted.
    with pytest.raises(RuntimeError, match="WORK_MODEL 'unpriced-model' has no price.*MODEL_PRICES"):
        make_app(WORK_MODEL="unpriced-model")
