"""Loopback servers that speak Anthropic's and OpenAI's streaming wire formats, scripted per test.

A test queues one Reply per request it expects. A streamed reply is a list of steps: Send (one
HTTP chunk, optionally split into two TCP sends mid-chunk), Sleep (a stall) and Hangup (the
connection dropped without ending the chunked body). anthropic_frames() and openai_frames() build
the frames a real provider sends, so a test can cut, reorder or corrupt them.
"""
import json
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SPLIT_PAUSE = 0.05  # between the two halves of a split send, so they leave as separate segments


@dataclass
class Send:
    data: bytes
    split_at: int | None = None  # byte offset in data at which to cut the chunk into two sends


@dataclass
class Sleep:
    seconds: float


class Hangup:
    """Drop the connection mid-body: no terminating chunk, as when a provider's proxy dies."""


@dataclass
class Reply:
    steps: list = field(default_factory=list)  # a streamed 200 reply
    status: int = 200
    body: dict | None = None  # a whole JSON reply instead of a stream (provider errors)
    headers: dict = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict
    body: dict


class ProviderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.replies = deque()
        self.received = []
        self.disconnected = threading.Event()  # a write failed: the client went away mid-reply
        self.finished = threading.Event()      # a streamed reply was written to its end
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0       # connections accepted so far
        self.open_connections = 0  # connections not yet closed by either side
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def handle_error(self, request, client_address):
        # A client that hangs up mid-reply is a case under test, not a fault of this server.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def process_request_thread(self, request, client_address):
        with self.lock:
            self.connections += 1
            self.open_connections += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.open_connections -= 1

    def queue(self, *replies):
        self.replies.extend(replies)
        return self

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()  # ends any scripted stall at once
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.received.append(Received(self.path, headers, json.loads(raw)))
        # Without a scripted reply, refuse loudly rather than let a test wait on nothing.
        reply = (self.server.replies.popleft() if self.server.replies
                 else Reply(status=500, body={"error": {"message": "no reply scripted"}}))
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.play(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.server.disconnected.set()
            self.close_connection = True

    def play(self, reply):
        if reply.body is not None:
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        for name, value in {"Content-Type": "text/event-stream; charset=utf-8",
                            "Cache-Control": "no-cache", **reply.headers}.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for step in reply.steps:
            if isinstance(step, Sleep):
                if self.server.stopping.wait(step.seconds):
                    return
            elif isinstance(step, Hangup):
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            else:
                self.chunk(step)
        self.wfile.write(b"0\r\n\r\n")
        self.server.finished.set()

    def chunk(self, step):
        frame = b"%x\r\n%s\r\n" % (len(step.data), step.data)
        if step.split_at is None:
            self.wfile.write(frame)
            return
        cut = frame.index(b"\r\n") + 2 + step.split_at
        self.wfile.write(frame[:cut])
        self.wfile.flush()
        threading.Event().wait(SPLIT_PAUSE)
        self.wfile.write(frame[cut:])
