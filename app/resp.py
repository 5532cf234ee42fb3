"""Redis spoken directly in RESP over a gevent socket, for the two paths every streamed token takes.

The fan-out's subscription and the publisher's batches carry every ticker frame: at 200 jobs that
is thousands of commands and messages a second. redis-py's pipeline spent about 45 µs of CPU a
frame building, packing and parsing; here hiredis packs each command and parses each reply in C
(about 5 µs a frame). Everything else (rate limits, snapshots, stops) keeps redis-py's pool.

The socket is gevent's own, so it cooperates with the hub whether or not the process is
monkey-patched (gunicorn's gevent worker is; a test process driving the Flask test client is not).
"""
import gevent.socket
import gevent.ssl
import hiredis
import redis
from redis.connection import parse_url

CONNECT_SECONDS = 5


class ReplyError(redis.ResponseError):
    """Redis answered a command with an error."""


def command(*args):
    """Return one command packed as RESP."""
    return hiredis.pack_command(args)


class Connection:
    """One Redis connection: packed commands out, whole replies in."""

    def __init__(self, url, name, timeout=None):
        params = parse_url(url)
        if params.get("path"):
            sock = gevent.socket.socket(gevent.socket.AF_UNIX, gevent.socket.SOCK_STREAM)
            sock.settimeout(CONNECT_SECONDS)
            sock.connect(params["path"])
        else:
            sock = gevent.socket.create_connection((params.get("host", "localhost"),
                                                    int(params.get("port", 6379))), timeout=CONNECT_SECONDS)
            sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
            sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_KEEPALIVE, 1)
            if url.startswith("rediss://"):
                sock = gevent.ssl.create_default_context().wrap_socket(sock, server_hostname=params.get("host"))
        self.sock, self.parser = sock, hiredis.Reader()
        self.buffer = memoryview(bytearray(65536))  # reused: a fresh buffer per read cost an mmap
        setup = []
        if params.get("password") is not None:
            setup.append(command("AUTH", *[p for p in (params.get("username"), params["password"])
                                          if p is not None]))
        if int(params.get("db") or 0):
            setup.append(command("SELECT", params["db"]))  # the live state lives in the URL's database
        setup.append(command("CLIENT", "SETNAME", name))
        try:
            self.execute(setup)
        except BaseException:
            self.close()
            raise
        sock.settimeout(timeout)

    def send(self, data):
        self.sock.sendall(data)

    def next_reply(self):
        """Return the next whole reply (an error reply as a ReplyError instance, not raised).

        A socket timeout leaves a partly read reply in the parser, to be finished by the next call.
        """
        while True:
            reply = self.parser.gets()
            if reply is not False:
                return ReplyError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply
            n = self.sock.recv_into(self.buffer)
            if not n:
                raise ConnectionError("Redis closed the connection")
            self.parser.feed(self.buffer, 0, n)

    def replies(self, commands):
        """Send packed commands in one write and return their replies, error replies included."""
        self.send(b"".join(commands))
        return [self.next_reply() for _ in commands]  # all read, so the connection stays in step

    def execute(self, commands):
        """Send packed commands in one write and return their replies; raise the first error reply."""
        replies = self.replies(commands)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return replies

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
