"""Send the frames of all of a process's jobs to Redis together: one write and one read per batch.

Hundreds of jobs each publishing twenty frames a second would otherwise make thousands of round
trips a second, each a send and a receive on the hub. Frames that arrive while a batch is on its
way go in the next one, so a frame waits at most for one batch ahead of it. The batches go over a
connection of the publisher's own, spoken in RESP by app/resp.py (redis-py's pipeline cost more
CPU per frame than rendering it).
"""
import os

import gevent
import gevent.event
import hiredis
import redis
from flask import current_app

from . import resp

CLIENT_NAME = "workshop-publish"  # CLIENT LIST shows the connection as workshop-publish-<pid>
TIMEOUT_SECONDS = 5  # a batch Redis hasn't answered by then fails; the next one reconnects


class Publisher:
    """One process's (and gevent hub's) batches of commands, on one connection."""

    def __init__(self, url):
        self.url, self.name = url, f"{CLIENT_NAME}-{os.getpid()}"
        self.conn, self.waiting, self.greenlet = None, [], None

    def send(self, commands, raise_replies=True):
        """Queue packed commands for the next batch; return their replies once Redis has answered.

        An error reply is raised, or with raise_replies=False returned in its place.
        """
        result = gevent.event.AsyncResult()
        self.waiting.append((commands, result, raise_replies))
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)
        return result.get()

    def _run(self):
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    replies = self._execute([c for commands, _, _ in batch for c in commands])
                except redis.RedisError as error:  # every sender of the batch sees the failure
                    for _, result, _ in batch:
                        result.set_exception(error)
                    continue
                at = 0
                for commands, result, raise_replies in batch:
                    mine, at = replies[at:at + len(commands)], at + len(commands)
                    failed = raise_replies and next((r for r in mine if isinstance(r, resp.ReplyError)), None)
                    if not failed:
                        result.set(mine)
                    else:
                        result.set_exception(failed)
        finally:
            self.greenlet = None

    def _execute(self, commands):
        try:
            if self.conn is None:
                self.conn = resp.Connection(self.url, self.name, timeout=TIMEOUT_SECONDS)
            return self.conn.replies(commands)
        except (OSError, hiredis.ProtocolError) as error:
            # Replies may be half read: this connection is done. The next batch connects anew.
            self.close()
            raise redis.ConnectionError(f"Redis is unreachable: {error}") from error

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def send(commands, raise_replies=True):
    """Send packed commands with the next batch of this process's frames; return their replies."""
    # One publisher per process, app and gevent hub (OS thread): a batch is sent by a greenlet of
    # that hub, and a forked worker must not share its parent's connection.
    publishers = current_app.extensions.setdefault("publishers", {})
    key = (os.getpid(), id(gevent.get_hub()))
    if key not in publishers:
        publishers[key] = Publisher(current_app.config["REDIS_URL"])
    return publishers[key].send(commands, raise_replies)
