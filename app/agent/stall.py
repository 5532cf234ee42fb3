"""Tell a stalled provider stream from a slow one, with one timer per stream instead of one per read.

A socket timeout makes gevent build, start and cancel a Timeout (a timer and its object) around
every read: 200 streams at 20 chunks a second made that a sixth of what reading a chunk cost.
Here a stream's socket has no timeout while its body is read; one repeating timer per stream
looks, a few times per stall period, at how long the current read has waited, and raises the
socket's own timeout error in the reading greenlet once a read has waited the whole period.
"""
import socket
import time

import gevent
import gevent.socket

CHECKS_PER_PERIOD = 4  # a stall is raised within 1 1/4 periods of the last chunk


class Watchdog:
    """Raise socket.timeout in the current greenlet when one of its reads waits `seconds`."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.greenlet = gevent.getcurrent()
        self.since = None  # when the read under way began; None between reads
        period = seconds / CHECKS_PER_PERIOD
        self.timer = gevent.get_hub().loop.timer(period, period)
        self.timer.start(self._check)

    def read(self, reads):
        """Return next(reads), the read timed by this watchdog."""
        self.since = time.monotonic()
        try:
            return next(reads)
        finally:
            self.since = None

    def _check(self):
        if self.since is not None and time.monotonic() - self.since >= self.seconds:
            self.close()
            # Raised where the greenlet waits for the socket: urllib3 reports it as a read timeout.
            self.greenlet.throw(socket.timeout("The read timed out."))

    def close(self):
        self.timer.stop()
        self.timer.close()


def watch(sock, seconds):
    """Take over sock's read timeout with a Watchdog; None where sock doesn't cooperate with gevent.

    Outside gevent (a plain blocking socket) no timer could fire while a read blocks, so there
    the socket keeps its own timeout.
    """
    if seconds is None or not isinstance(sock, gevent.socket.socket):
        return None
    sock.settimeout(None)  # the next request on this connection sets its timeouts again
    return Watchdog(seconds)
