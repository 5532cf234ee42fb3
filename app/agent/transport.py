"""The SDKs' HTTP transport: httpx2's client interface over urllib3's connection pools.

Why it exists: streaming an answer costs a network read per chunk, and through the SDKs' default
transport (httpx2 over httpcore2 and h11, pure Python) reading a provider's stream cost 155-175 us
of CPU per chunk under gevent with 200 streams at 20 chunks a second each: two thirds of a core
for reading alone. urllib3 reads through http.client's C-buffered file. Over this transport the
same streams cost 105-130 us a chunk through the OpenAI SDK's own stream, and 90-97 us with the
OpenAI agent's own SSE parser (sse.py), close to the 75-92 us of urllib3 with a hand-written split
and the same read timeout. Both SDKs take it as `http_client=DefaultHttpxClient(transport=...)`,
their httpx2.Client with their own defaults.

What it keeps of the default transport: method, URL, headers and body as httpx2 built them;
the per-request timeouts the SDKs put in `request.extensions["timeout"]` (a read timeout is a
read that waits that long for a single byte: the stall detector; under gevent a body's reads are
timed by stall.py, one timer per stream rather than one per read); TLS verification with the same
CA store as httpx2; keep-alive connections reused across requests; bodies streamed raw (httpx2
decodes any content-encoding itself); the connection closed when a response is closed before
its end; and urllib3's errors raised as httpx2's, which the SDKs and `remote.explain` know.
What it does not: proxies from the environment (a custom transport never reads them).
"""
import contextvars
import socket
import ssl

import httpx2
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (ConnectTimeoutError, EmptyPoolError, HTTPError, LocationValueError,
                                NewConnectionError, ProtocolError, ReadTimeoutError, SSLError)

from . import stall

# Idle keep-alive connections kept per host. More than the streams one worker runs at once;
# the pool never blocks: past this many, a request opens a connection of its own.
POOL_SIZE = 500
READ_SIZE = 65536  # at most this much per read; a streamed chunk usually arrives whole
# TCP keepalives after a minute idle, as the Anthropic SDK's own transport sets them: a long
# silence behind a NAT or a load balancer is probed rather than silently dropped.
KEEPALIVE = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)] + [
    (socket.IPPROTO_TCP, getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 60), ("TCP_KEEPCNT", 5))
    if hasattr(socket, name)]

# urllib3 sends a request under its connect timeout; the write timeout reaches the connection here.
_UNSET = object()
_write_timeout = contextvars.ContextVar("write_timeout", default=_UNSET)


class _TimedWrites:
    """A connection that sends the request under the SDK's write timeout (None: no limit), and
    hands its response the socket the body is read from."""

    def send(self, data):
        if self.sock is None:
            self.connect()  # a fresh plain-HTTP connection, still under the connect timeout
        timeout = _write_timeout.get()
        if timeout is not _UNSET:
            self.sock.settimeout(timeout)
        super().send(data)

    def getresponse(self):
        sock = self.sock  # http.client lets go of it when the response ends the connection
        response = super().getresponse()
        response.body_socket = sock
        return response


class _HTTPConnection(_TimedWrites, HTTPConnection):
    pass


class _HTTPSConnection(_TimedWrites, HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class Urllib3Transport(httpx2.BaseTransport):
    """An httpx2 transport that sends each request through a urllib3 pool manager."""

    def __init__(self, ssl_context=None, pool_size=POOL_SIZE):
        # The CA store httpx2 would use (system CAs, SSL_CERT_FILE/SSL_CERT_DIR); verification on.
        context = ssl_context or httpx2.create_ssl_context()
        self._pools = urllib3.PoolManager(
            num_pools=16, maxsize=pool_size, block=False, ssl_context=context,
            cert_reqs=ssl.CERT_REQUIRED, socket_options=HTTPConnection.default_socket_options + KEEPALIVE)
        self._pools.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def handle_request(self, request):
        url = request.url
        timeouts = request.extensions.get("timeout") or {}
        headers = urllib3.HTTPHeaderDict()
        for name, value in request.headers.raw:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        body = request.read()
        token = _write_timeout.set(timeouts.get("write", _UNSET))
        try:
            pool = self._pools.connection_from_host(url.raw_host.decode("ascii"), url.port, scheme=url.scheme)
            # urllib3 waits for no pool slot (block=False), so the pool timeout never applies.
            response = pool.urlopen(request.method, url.raw_path.decode("ascii"), body=body or None,
                                    headers=headers, retries=False, redirect=False,
                                    assert_same_host=False, preload_content=False,
                                    decode_content=False,
                                    timeout=urllib3.Timeout(connect=timeouts.get("connect"),
                                                            read=timeouts.get("read")))
        except (HTTPError, OSError) as exc:
            _raise_mapped(exc, sending=True)
        finally:
            _write_timeout.reset(token)
        return httpx2.Response(
            response.status, stream=_Body(response, timeouts.get("read")),
            headers=[(name.encode("latin-1"), value.encode("latin-1"))
                     for name, value in response.headers.items()],
            extensions={"http_version": b"HTTP/1.0" if response.version == 10 else b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode("latin-1")})

    def close(self):
        self._pools.clear()


class _Body(httpx2.SyncByteStream):
    """A response body as it comes off the wire; closing it early closes its connection."""

    def __init__(self, response, read_timeout):
        self._response = response
        self._read_timeout = read_timeout
        self._finished = False

    def __iter__(self):
        response = self._response
        reads = (response.read_chunked(READ_SIZE, decode_content=False) if response.chunked
                 else _read1s(response))
        watchdog = stall.watch(getattr(response, "body_socket", None), self._read_timeout)
        try:
            if watchdog is None:
                yield from reads
            else:
                try:
                    while True:
                        yield watchdog.read(reads)
                except StopIteration:
                    pass
                finally:
                    watchdog.close()
        except (HTTPError, OSError) as exc:
            _raise_mapped(exc, sending=False)
        self._finished = True

    def close(self):
        response = self._response
        if not self._finished:
            # Unread bytes would spoil the connection for the next request: drop it instead.
            response.close()
        # The pool gets its slot back (a closed connection reconnects when next used).
        response.release_conn()


def _read1s(response):
    # read1: whatever has arrived, without waiting to fill READ_SIZE.
    while data := response.read1(READ_SIZE, decode_content=False):
        yield data


def _raise_mapped(exc, sending):
    """Raise the httpx2 exception for a urllib3 or socket failure (anything else as it is)."""
    mapped = _mapped(exc, sending)
    if mapped is exc:
        raise exc
    raise mapped from exc


def _mapped(exc, sending):
    message = str(exc)
    # urllib3 wraps what http.client or the socket raised as ProtocolError(message, cause).
    cause = exc.args[1] if isinstance(exc, ProtocolError) and len(exc.args) > 1 else exc
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError, its base class
        return httpx2.ConnectError(message)  # refused, unreachable or unresolvable
    if isinstance(exc, ConnectTimeoutError):
        return httpx2.ConnectTimeout(message)
    if isinstance(exc, ReadTimeoutError):
        return httpx2.ReadTimeout(message)
    if isinstance(exc, SSLError):  # a certificate refused, or TLS broken mid-body
        return httpx2.ConnectError(message) if sending else httpx2.ReadError(message)
    if isinstance(exc, EmptyPoolError):
        return httpx2.PoolTimeout(message)
    if isinstance(exc, LocationValueError):
        return httpx2.UnsupportedProtocol(message)
    if isinstance(cause, TimeoutError):  # urllib3 names read timeouts itself: this is a send
        return httpx2.WriteTimeout(message) if sending else httpx2.ReadTimeout(message)
    if isinstance(cause, OSError):  # a reset, or a broken pipe with no response to read
        return httpx2.ReadError(message)
    if isinstance(exc, HTTPError):  # hung up mid-body, or before the response; broken framing
        return httpx2.RemoteProtocolError(message)
    return exc
