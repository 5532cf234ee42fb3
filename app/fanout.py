"""One Redis subscription per worker process, fanned out to every viewer's queue.

flask-sse gives each viewer its own pubsub connection; with thousands of viewers that is thousands
of Redis connections. Here a worker holds ONE pubsub connection, read by one background greenlet
that hands each message to the queues of that channel's viewers. A channel is SUBSCRIBEd when its
first viewer arrives and UNSUBSCRIBEd the moment its last viewer leaves. The wire format is
flask-sse's, unchanged: JSON messages PUBLISHed on the job's channel.

The connection speaks RESP itself (app/resp.py: hiredis over a gevent socket), so it cooperates
with the hub whether or not the process is monkey-patched, and parses each message in C.

If the connection dies (Redis restarts), every viewer gets LOST and ends its stream, as a viewer
did before when its own pubsub broke: frames published meanwhile are gone, and the browser's
reconnect brings a snapshot that is exact again. The reader reconnects with backoff and
re-subscribes the channels that still have viewers.
"""
import logging
import os
import secrets
import socket
import threading

import gevent
import gevent.event
import gevent.lock
import hiredis
import redis

from . import resp

log = logging.getLogger(__name__)

CLIENT_NAME = "workshop-fanout"  # CLIENT LIST shows the connection as workshop-fanout-<pid>
LOST = object()  # the subscription broke: frames may be missing, so the viewer must start over
OVERFLOW = object()  # the viewer stopped reading and fell too far behind
LEFT = object()  # the viewer's browser closed its connection
HEARTBEAT = object()  # nothing came for the viewer's heartbeat period: its stream sends a comment
MAX_BACKLOG = 2000  # frames queued for one viewer before it is cut off (Redis would do the same)
ACK_TIMEOUT = 10  # seconds a new viewer waits for Redis to confirm its subscription
DRAIN_SECONDS = 2  # at a shutdown, how long frames already published may take to reach viewers
HEALTH_SECONDS = 30  # a connection silent this long is PINGed; silent twice that long, replaced
SWEEP_SECONDS = 0.5  # how often the viewers' quiet is counted, for their heartbeats


class Viewer:
    """One viewer's end of the fan-out: the raw messages (bytes), or LOST/OVERFLOW/LEFT/HEARTBEAT,
    not yet read."""

    __slots__ = ("channel", "items", "ready", "hub", "watcher", "quiet", "heartbeat", "__weakref__")

    def __init__(self, hub, channel, heartbeat=None):
        self.hub, self.channel = hub, channel
        # A list and an Event (set while the list holds something), not a gevent Queue: a Queue
        # holds three deques, 2.2 KB even when empty, 4.5 MB of the worker with 2,000 idle viewers.
        self.items, self.ready = [], gevent.event.Event()
        self.watcher = None
        # Heartbeats come from the hub's sweeps (HEARTBEAT after `heartbeat` seconds of quiet),
        # not from a timeout on every wait: a gevent Timeout per wait cost more than the wait.
        self.quiet = 0  # sweeps since the last message
        self.heartbeat = heartbeat and max(2, round(heartbeat / SWEEP_SECONDS))  # in sweeps

    def put(self, message):
        """Hand the viewer a message; from any greenlet of this hub, or from the hub itself."""
        self.items.append(message)
        self.quiet = 0
        self.ready.set()

    def watch_hangup(self, sock):
        """Hand this viewer LEFT as soon as its client closes sock, rather than at the next write."""
        # An idle stream only learns that its browser left when a heartbeat fails, up to 15 s
        # later; an event-loop watcher on the socket (no greenlet, no buffer) knows at once.
        if sock is None or self.watcher is not None:
            return
        self.watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.watcher.start(self._readable, sock)

    def _readable(self, sock):
        self.watcher.stop()  # one look: a request pipelined behind the stream is left alone
        try:
            gone = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if gone:
            self.put(LEFT)

    def get(self, timeout=None):
        """Return the next message, or None after timeout seconds without one."""
        if not self.items and not self.ready.wait(timeout):
            return None
        message = self.items.pop(0)
        if not self.items:
            self.ready.clear()
        return message

    def get_ready(self, timeout=None):
        """Return every message there is, waiting up to timeout seconds for one: [] if none came."""
        if not self.items:
            self.ready.wait(timeout)
        ready, self.items = self.items, []
        self.ready.clear()
        return ready

    def close(self):
        """Leave the channel and stop watching the client's socket."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
            self.watcher = None
        self.hub.leave(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Channel:
    __slots__ = ("viewers", "confirmed")

    def __init__(self):
        self.viewers = set()
        self.confirmed = gevent.event.Event()


class Hub:
    """The process's fan-out: one pubsub connection, one reader greenlet, many viewers."""

    def __init__(self, url, name=None):
        self.url, self.name = url, name or f"{CLIENT_NAME}-{os.getpid()}"
        self.channels = {}  # channel name (bytes) -> _Channel
        self.unconfirmed = {}  # channel -> SUBSCRIBEs sent and not yet confirmed
        self.conn = None  # a resp.Connection while connected
        self.connected = gevent.event.Event()
        self.write_lock = gevent.lock.Semaphore()
        self.reader = None
        self.sweeper = None
        self.reconnects = 0
        self.down = False  # the last attempt to reach Redis failed (or the connection broke)
        self.stopping = False  # the process is shutting down: no viewer waits for Redis any more
        self.pongs = {}  # PING payload -> event set once Redis has answered it

    # --- viewers ---------------------------------------------------------------------------
    def join(self, channel, timeout=ACK_TIMEOUT, heartbeat=None):
        """Register a viewer of channel; return it once Redis has confirmed the subscription.

        Returning only after the confirmation means that anything read from Redis afterwards (a
        snapshot) is older than every frame the viewer will be handed. With `heartbeat`, the
        viewer is handed HEARTBEAT whenever nothing else came for that many seconds.
        """
        if self.stopping:
            raise ConnectionError("the process is stopping")
        key = channel.encode() if isinstance(channel, str) else channel
        viewer = Viewer(self, key, heartbeat)
        state = self.channels.get(key)
        if state is None:
            state = self.channels[key] = _Channel()
            state.viewers.add(viewer)
            self._start()
            if self.connected.is_set():
                self._send_subscribe(key)
            # else the reader subscribes every channel with viewers when it connects
        else:
            state.viewers.add(viewer)
        # A channel already confirmed needs no wait: with 2,000 viewers connecting at once, some
        # were seen stuck for good inside Event.wait() on an event that was already set (gevent
        # queues such a caller behind the waiters still being woken, without its timeout).
        if not (state.confirmed.is_set() or state.confirmed.wait(timeout)) or self.stopping:
            self.leave(viewer)
            raise ConnectionError(f"Redis did not confirm the subscription within {timeout} s")
        return viewer

    def leave(self, viewer):
        """Unregister a viewer; the channel's last viewer unsubscribes it at once."""
        state = self.channels.get(viewer.channel)
        if state is None or viewer not in state.viewers:
            return
        state.viewers.discard(viewer)
        if not state.viewers:
            del self.channels[viewer.channel]
            if self.connected.is_set():
                try:
                    self._send(resp.command("UNSUBSCRIBE", viewer.channel))
                except OSError:
                    pass  # the reader notices the broken connection and starts over

    def disconnect_all(self):
        """End every viewer's stream (the process is stopping; their browsers reconnect elsewhere)."""
        self.drain()  # the final panels just published reach their viewers first
        self.stopping = True
        for state in tuple(self.channels.values()):
            for viewer in tuple(state.viewers):
                viewer.put(LEFT)
            state.confirmed.set()  # wakes a join still waiting for a Redis that is down

    def drain(self, timeout=DRAIN_SECONDS):
        """Wait until every message Redis had for this subscription by now has been handed out."""
        # Redis answers a PING on a subscribed connection after the messages queued before it.
        if not self.connected.is_set():
            return
        token = secrets.token_hex(8).encode()
        answered = self.pongs[token] = gevent.event.Event()
        try:
            self._send(resp.command("PING", token))
            answered.wait(timeout)
        except OSError:
            pass
        finally:
            self.pongs.pop(token, None)

    def viewer_count(self):
        return sum(len(state.viewers) for state in self.channels.values())

    # --- connection -----------------------------------------------------------------------
    def _start(self):
        if self.reader is None or self.reader.dead:
            self.reader = gevent.spawn(self._run)
        if self.sweeper is None:
            self.sweeper = gevent.spawn(self._sweep)

    def _sweep(self):
        """Hand HEARTBEAT to every viewer that has had nothing for its heartbeat period."""
        try:
            while self.channels:
                gevent.sleep(SWEEP_SECONDS)
                for state in tuple(self.channels.values()):
                    for viewer in tuple(state.viewers):
                        if viewer.heartbeat:
                            viewer.quiet += 1
                            if viewer.quiet >= viewer.heartbeat:
                                viewer.put(HEARTBEAT)
        finally:
            self.sweeper = None

    def _send(self, data):
        with self.write_lock:
            self.conn.send(data)

    def _send_subscribe(self, *keys):
        for key in keys:
            self.unconfirmed[key] = self.unconfirmed.get(key, 0) + 1
        try:
            self._send(resp.command("SUBSCRIBE", *keys))
        except OSError:
            pass  # the reader notices the broken connection and starts over

    def _run(self):
        backoff = 0.05
        while True:
            try:
                self.conn = resp.Connection(self.url, self.name, timeout=HEALTH_SECONDS)
            except (OSError, redis.RedisError, hiredis.ProtocolError) as error:
                self.down = True
                log.warning("fan-out: cannot connect to Redis (%s); retrying in %.2f s", error, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5)
                continue
            backoff = 0.05
            self.down = False
            self.unconfirmed.clear()
            self.connected.set()
            if self.channels:
                self._send_subscribe(*self.channels)
            try:
                self._read()
            except (OSError, redis.RedisError, hiredis.ProtocolError) as error:
                log.warning("fan-out: Redis subscription lost (%s); reconnecting", error)
            finally:
                self.down = True
                self.connected.clear()
                self.conn.close()
            self.reconnects += 1
            # Frames published while we were away are lost: every viewer starts over.
            for state in self.channels.values():
                state.confirmed.clear()
                for viewer in state.viewers:
                    viewer.put(LOST)
            gevent.sleep(backoff)

    def _read(self):
        pinged = False
        while True:
            try:
                reply = self.conn.next_reply()
            except TimeoutError:
                if pinged:
                    raise ConnectionError("Redis did not answer a PING")
                self._send(resp.command("PING"))
                pinged = True
                continue
            pinged = False
            if isinstance(reply, resp.ReplyError):
                raise reply
            kind = reply[0]
            if kind == b"message":
                state = self.channels.get(reply[1])
                if state is None:
                    continue
                for viewer in tuple(state.viewers):
                    if len(viewer.items) >= MAX_BACKLOG:
                        state.viewers.discard(viewer)
                        viewer.items.clear()
                        viewer.put(OVERFLOW)
                        if not state.viewers:
                            del self.channels[reply[1]]
                            self._send(resp.command("UNSUBSCRIBE", reply[1]))
                        continue
                    viewer.put(reply[2])
            elif kind == b"pong" and len(reply) > 1 and reply[1] in self.pongs:
                self.pongs[reply[1]].set()
            elif kind == b"subscribe":
                key = reply[1]
                left = self.unconfirmed.get(key, 0) - 1
                if left > 0:
                    self.unconfirmed[key] = left
                    continue
                self.unconfirmed.pop(key, None)
                state = self.channels.get(key)
                if state is not None:
                    state.confirmed.set()


_hubs = {}
_hubs_lock = threading.Lock()


def disconnect_all():
    """End every viewer's stream in this process."""
    for found in tuple(_hubs.values()):
        found.disconnect_all()


def hub(url):
    """Return this process's (and OS thread's) fan-out for a Redis URL, created on first use."""
    # Keyed by gevent's hub, not threading.get_ident(): under monkey-patching the latter names
    # the current greenlet, which would give every viewer a hub (and a connection) of its own.
    key = (os.getpid(), id(gevent.get_hub()), url)
    found = _hubs.get(key)
    if found is None:
        with _hubs_lock:
            found = _hubs.get(key)
            if found is None:
                found = _hubs[key] = Hub(url)
    return found
