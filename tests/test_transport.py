"""The urllib3 transport under both SDKs, and the SSE parser the OpenAI agent reads with."""
import gzip
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.agent import ProviderError, TextDelta, remote
from app.agent.sse import data_events
from app.agent.transport import Urllib3Transport

from conftest import ROOT
from providers import Hangup, ProviderServer, Reply, Send, Sleep
from test_providers import MODELS, Provider, drain, provider, server, text_of, usage_of  # noqa: F401 (fixtures)
from wire import data, openai_error_body, openai_frames

TIMEOUT = httpx2.Timeout(connect=5, read=5, write=5, pool=5)


def chain(exc):
    """Return an exception and everything it was raised from."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def raised_from(exc, kind):
    return any(isinstance(link, kind) for link in chain(exc))


def until(condition, seconds=5):
    """Wait for condition() to hold; return whether it did (a liveness bound, not a speed test)."""
    done = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return condition()


def events(*reads):
    return list(data_events(iter(reads)))


# The SSE parser


def test_one_event_per_read_is_its_data():
    assert events(b"data: {\"a\": 1}\n\n", b"data: [DONE]\n\n") == [b'{"a": 1}', b"[DONE]"]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_a_line_ending(end):
    stream = b"data: one" + end + end + b"data: two" + end + b"data: three" + end + end
    assert events(stream) == [b"one", b"two\nthree"]


def test_a_crlf_cut_between_two_reads_is_one_line_ending():
    # Were the CR and the LF read as two endings, "a" would end an event of its own.
    assert events(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [b"a\nb"]


def test_a_blank_line_cut_between_two_reads_ends_the_event():
    assert events(b"data: a\n", b"\ndata: b\r\n", b"\r\n") == [b"a", b"b"]
    assert events(b"data: a\r", b"\r", b"data: b\r", b"\r") == [b"a", b"b"]


def test_an_event_cut_anywhere_arrives_whole():
    stream = 'data: {"text": "🛠️ and 👩‍🔧"}\n\n'.encode()
    for cut in range(1, len(stream)):
        assert events(stream[:cut], stream[cut:]) == ['{"text": "🛠️ and 👩‍🔧"}'.encode()]


def test_data_lines_join_with_lf_and_lose_one_leading_space():
    assert events(b"data: a\ndata:b\ndata:  c\ndata\ndata:\n\n") == [b"a\nb\n c\n\n"]


def test_comments_other_fields_and_runs_of_blank_lines_carry_nothing():
    stream = (b": OPENROUTER PROCESSING\n\n\n\nevent: completion\nid: 7\nretry: 100\n: note\n"
              b"data: x\nsomething: else\n\n:keep-alive\n\n")
    assert events(stream) == [b"x"]


def test_an_event_without_data_or_unfinished_at_the_end_is_no_event():
    assert events(b"event: ping\n\n", b"id: 3\n\n", b"data: cut off\n") == []
    assert events(b"") == [] and events() == []


def test_a_large_event_in_many_reads():
    payload = b"x" * 300_000
    stream = b"data: " + payload + b"\n\n"
    reads = [stream[i:i + 1000] for i in range(0, len(stream), 1000)]
    assert events(*reads) == [payload]


line_ends = st.sampled_from(["\n", "\r\n", "\r"])
values = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
values = st.one_of(values, values.map(lambda value: " " + value))  # with and without the usual space


@st.composite
def streams(draw):
    """Return (the bytes of an event stream, the data of its events)."""
    text, expected = "", []
    for _ in range(draw(st.integers(0, 5))):
        lines = []
        for value in draw(st.lists(values, min_size=1, max_size=3)):
            if draw(st.booleans()):
                text += ":" + draw(values) + draw(line_ends)
            text += "data:" + value + draw(line_ends)
            lines.append(value[1:] if value.startswith(" ") else value)
        blank = draw(line_ends)
        text += "\r" if text.endswith("\r") and blank == "\n" else blank  # a CR then LF is one ending
        expected.append("\n".join(lines).encode())
    return text.encode(), expected


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 400), max_size=8))
def test_any_cut_of_a_stream_gives_its_events(stream, cuts):
    raw, expected = stream
    points = sorted({cut % (len(raw) + 1) for cut in cuts})
    reads = [raw[a:b] for a, b in zip([0] + points, points + [len(raw)])]
    assert events(*reads) == expected


# The OpenAI agent reading through the parser


def cut_frames(frames, end=b"\n"):
    """Return the frames with their line endings changed, each cut in two HTTP chunks mid-ending."""
    steps = []
    for frame in frames:
        raw = frame.data.replace(b"\n", end)
        cut = raw.index(end) + 1  # inside a CRLF, or just after a lone CR or LF
        steps += [Send(raw[:cut]), Send(raw[cut:])]
    return steps


@pytest.mark.parametrize("end", [b"\r\n", b"\r", b"\n"])
def test_openai_stream_with_any_line_ending_cut_between_reads(server, end):
    server.queue(Reply(cut_frames(openai_frames(["Hello", ", world"], completion_tokens=7), end)))
    items, error = drain(Provider("openai", server).agent().stream("hi"))
    assert error is None and text_of(items) == "Hello, world"
    assert usage_of(items).output_tokens == 7


def test_openai_comments_between_chunks_are_ignored(server):
    frames = openai_frames(["one", " two"])
    comment = Send(b": OPENROUTER PROCESSING\n\n")
    server.queue(Reply([comment] + frames[:2] + [comment, comment] + frames[2:]))
    items, error = drain(Provider("openai", server).agent().stream("hi"))
    assert error is None and text_of(items) == "one two"


@pytest.mark.parametrize("kind, message", [("server_error", remote.PROVIDER_FAILED),
                                           ("rate_limit_error", remote.RATE_LIMITED),
                                           ("invalid_request_error", remote.REPORTED)])
def test_openai_error_event_mid_stream_is_reported(server, kind, message):
    frames = openai_frames(["First", " second"])
    server.queue(Reply(frames[:2] + [data(openai_error_body("Something broke.", kind))] + frames[2:]))
    items, error = drain(Provider("openai", server).agent().stream("hi"))
    assert text_of(items) == "First"
    assert isinstance(error, ProviderError) and str(error) == message
    assert raised_from(error, openai.APIError)  # the SDK's own error, as its stream raised it


def test_openai_data_that_is_not_json_is_unreadable(server):
    frames = openai_frames(["First"])
    server.queue(Reply(frames[:2] + [Send(b"data: <html>502 Bad Gateway</html>\n\n")]))
    items, error = drain(Provider("openai", server).agent().stream("hi"))
    assert text_of(items) == "First" and str(error) == remote.UNREADABLE


# Failures through each SDK, as the visitor reads them


def test_nothing_listening_is_a_lost_connection(provider):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}" + ("" if provider.kind == "anthropic" else "/v1")
    items, error = drain(provider.agent(PROVIDER_BASE_URL=url).stream("hi"))
    assert items == [] and str(error) == remote.LOST
    assert raised_from(error, httpx2.ConnectError)


def test_bad_credentials_are_the_operators_settings(provider):
    if provider.kind == "anthropic":
        body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    else:
        body = openai_error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    provider.server.queue(Reply(status=401, body=body))
    items, error = drain(provider.agent().stream("hi"))
    assert items == [] and str(error) == remote.MISCONFIGURED
    assert raised_from(error, provider.agent().sdk.AuthenticationError)


def test_a_stall_mid_stream_is_a_read_timeout(provider):
    frames = provider.frames(["First", " second"])
    head = provider.head(frames)
    provider.server.queue(Reply(head + [Sleep(30)] + frames[len(head):]))
    items, error = drain(provider.agent(PROVIDER_STALL_SECONDS=0.5).stream("hi"))
    assert text_of(items) == "First" and str(error) == remote.STALLED
    assert raised_from(error, httpx2.ReadTimeout)


def test_a_connection_cut_mid_stream_is_lost(provider):
    frames = provider.frames(["First", " second"])
    provider.server.queue(Reply(provider.head(frames) + [Hangup()]))
    items, error = drain(provider.agent().stream("hi"))
    assert text_of(items) == "First" and str(error) == remote.LOST
    assert raised_from(error, httpx2.RemoteProtocolError)


def test_an_abandoned_stream_closes_its_connection_and_the_next_one_works(provider):
    pieces = [f" piece{i}" for i in range(300)]
    frames = provider.frames(pieces)
    head = provider.head(frames)
    paced = [step for frame in frames[len(head):] for step in (Sleep(0.02), frame)]
    provider.server.queue(Reply(head + paced), Reply(provider.frames(["again"])))
    agent = provider.agent()
    stream = agent.stream("hi")
    assert next(item for item in stream if isinstance(item, TextDelta)).text == " piece0"
    stream.close()  # what a Stop button does
    assert until(lambda: provider.server.open_connections == 0), "the connection was kept open"
    items, error = drain(agent.stream("hi"))
    assert error is None and text_of(items) == "again"
    assert provider.server.connections == 2  # the abandoned connection was not used again


# Under gevent (as in the gunicorn worker) a stream's reads are timed by one watchdog per stream

GEVENT_DRAIN = """
from gevent import monkey; monkey.patch_all()
import json, sys, time
from app.agent import TextDelta, build, stall
config, pause = json.loads(sys.argv[1]), float(sys.argv[2])
text, error, watchdogs = "", None, []
timed = stall.Watchdog.read
stall.Watchdog.read = lambda self, reads: (watchdogs.append(self), timed(self, reads))[1]
try:
    for item in build(config).stream("hi"):
        if isinstance(item, TextDelta):
            text += item.text
            time.sleep(pause)  # a consumer busy elsewhere: no read is waiting meanwhile
except Exception as exc:
    error = str(exc)
print(json.dumps({"text": text, "error": error, "watchdogs": len(set(map(id, watchdogs)))}))
"""


def drain_under_gevent(provider, pause=0.0, **overrides):
    """Drain a stream in a gevent-patched process, as the worker does; return (text, error).

    Its reads must have been timed by a watchdog, not by a Timeout each (stall.py)."""
    work, cheap = MODELS[provider.kind]
    config = {"AGENT": provider.kind, "PROVIDER_API_KEY": "test-key", "WORK_MODEL": work,
              "EVAL_MODEL": cheap, "CHAT_MODEL": cheap, "PROVIDER_STALL_SECONDS": 5,
              "MAX_OUTPUT_TOKENS": 4096,
              "PROVIDER_BASE_URL": provider.server.url + ("" if provider.kind == "anthropic" else "/v1"),
              **overrides}
    done = subprocess.run([sys.executable, "-c", GEVENT_DRAIN, json.dumps(config), str(pause)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["watchdogs"] == 1
    return out["text"], out["error"]


@pytest.mark.parametrize("headers", [{}, {"Connection": "close"}], ids=["keep-alive", "close"])
def test_under_gevent_a_stall_mid_stream_is_a_read_timeout(provider, headers):
    # With "Connection: close" http.client lets go of the socket before the body is read.
    frames = provider.frames(["First", " second"])
    head = provider.head(frames)
    provider.server.queue(Reply(head + [Sleep(30)] + frames[len(head):], headers=headers))
    text, error = drain_under_gevent(provider, PROVIDER_STALL_SECONDS=0.5)
    assert text == "First" and error == remote.STALLED


def test_under_gevent_a_slow_stream_or_a_slow_reader_is_no_stall(provider):
    # Each gap is well under the stall period but the whole answer takes several periods, and
    # the reader also dawdles between chunks for longer than a period: neither is a stall.
    pieces = [f" piece{i}" for i in range(8)]
    frames = provider.frames(pieces)
    head = provider.head(frames)
    paced = [step for frame in frames[len(head):] for step in (Sleep(0.15), frame)]
    provider.server.queue(Reply(head + paced), Reply(provider.frames(["again"])))
    text, error = drain_under_gevent(provider, PROVIDER_STALL_SECONDS=0.4)
    assert error is None and text == "".join(pieces)
    text, error = drain_under_gevent(provider, pause=1.0, PROVIDER_STALL_SECONDS=0.4)
    assert error is None and text == "again"


# The transport itself


def test_connections_are_reused_once_a_body_is_read(server):
    stream = [Send(b"data: 1\n\n"), Send(b"data: 2\n\n")]
    server.queue(Reply(body={"n": 1}), Reply(stream), Reply(body={"n": 2}))
    with httpx2.Client(transport=Urllib3Transport(), timeout=TIMEOUT) as client:
        assert client.post(server.url + "/a?x=1", json={"q": 1}).json() == {"n": 1}
        with client.stream("POST", server.url + "/b", json={"q": 2}) as response:
            assert b"".join(response.iter_bytes()) == b"data: 1\n\ndata: 2\n\n"
        assert client.post(server.url + "/c", json={"q": 3}).json() == {"n": 2}
    assert [r.path for r in server.received] == ["/a?x=1", "/b", "/c"]
    assert [r.body for r in server.received] == [{"q": 1}, {"q": 2}, {"q": 3}]
    assert server.connections == 1


def test_request_headers_arrive_as_sent_and_response_headers_come_back(server):
    server.queue(Reply(body={}, headers={"X-Request-Id": "req_1", "Set-Cookie": "a=1"}))
    with httpx2.Client(transport=Urllib3Transport(), timeout=TIMEOUT) as client:
        response = client.post(server.url + "/", json={}, headers={"X-Custom": "yes", "User-Agent": "ua/1"})
    sent = server.received[0].headers
    assert sent["x-custom"] == "yes" and sent["user-agent"] == "ua/1"
    assert sent["content-type"] == "application/json"
    assert response.status_code == 200 and response.headers["x-request-id"] == "req_1"
    assert response.http_version == "HTTP/1.1" and response.reason_phrase == "OK"


def test_a_compressed_body_is_decoded_by_httpx2(server):
    packed = gzip.compress(b"data: compressed\n\n")
    server.queue(Reply([Send(packed[:10]), Send(packed[10:])], headers={"Content-Encoding": "gzip"}))
    with httpx2.Client(transport=Urllib3Transport(), timeout=TIMEOUT) as client:
        with client.stream("POST", server.url + "/", json={}) as response:
            assert b"".join(response.iter_bytes()) == b"data: compressed\n\n"


def test_a_connect_that_never_completes_is_a_connect_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once the backlog is full, new handshakes wait
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            with socket.socket() as probe:
                probe.settimeout(0.3)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    pytest.skip("this kernel completes connections beyond a full backlog")
            timeout = httpx2.Timeout(connect=0.3, read=5, write=5, pool=5)
            with httpx2.Client(transport=Urllib3Transport(), timeout=timeout) as client:
                with pytest.raises(httpx2.ConnectTimeout):
                    client.post(f"http://127.0.0.1:{port}/", json={})
        finally:
            for filler in fillers:
                filler.close()


def test_a_send_the_server_never_reads_is_a_write_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        accepted = []
        threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
        timeout = httpx2.Timeout(connect=5, read=5, write=0.3, pool=5)
        try:
            with httpx2.Client(transport=Urllib3Transport(), timeout=timeout) as client:
                with pytest.raises(httpx2.WriteTimeout):  # far more than the socket buffers hold
                    client.post(f"http://127.0.0.1:{port}/", content=b"x" * (64 << 20))
        finally:
            for connection in accepted:
                connection.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class TLSProviderServer(ProviderServer):
    def __init__(self, cert, key):
        super().__init__()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.url = self.url.replace("http://", "https://")

    def get_request(self):
        connection, address = super().get_request()
        # The handshake happens in the handler's thread, at its first read.
        return self.context.wrap_socket(connection, server_side=True,
                                        do_handshake_on_connect=False), address

    def handle_error(self, request, client_address):
        pass  # a client that refuses the certificate is a case under test


@pytest.fixture
def tls_server(certificate):
    server = TLSProviderServer(*certificate).start()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_an_untrusted_certificate_is_refused(tls_server, kind):
    tls_server.queue(Reply(Provider(kind, tls_server).frames(["secret"])))
    items, error = drain(Provider(kind, tls_server).agent().stream("hi"))
    assert items == [] and str(error) == remote.LOST
    assert raised_from(error, httpx2.ConnectError)
    assert any("CERTIFICATE_VERIFY_FAILED" in str(link) for link in chain(error))
    assert tls_server.received == []


def test_a_trusted_certificate_streams_and_reuses_its_connection(tls_server, certificate):
    tls_server.queue(Reply([Send(b"data: 1\n\n"), Send(b"data: 2\n\n")]), Reply(body={"ok": True}))
    transport = Urllib3Transport(ssl_context=ssl.create_default_context(cafile=str(certificate[0])))
    with httpx2.Client(transport=transport, timeout=TIMEOUT) as client:
        with client.stream("POST", tls_server.url + "/v1/chat/completions", json={}) as response:
            assert list(data_events(response.iter_bytes())) == [b"1", b"2"]
        assert client.post(tls_server.url + "/", json={}).json() == {"ok": True}
    assert tls_server.connections == 1
