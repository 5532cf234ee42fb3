"""One ticker per process: the frames of all its streaming jobs, built and published together.

A greenlet per job, woken for every delta and waiting on a round trip to Redis of its own, cost
more CPU than the frame it sent once hundreds of jobs streamed at once. Here a provider's greenlet
only marks its job as changed; one loop per process builds a frame for every changed job and sends
them all to Redis in one batch. Deltas that arrive while a batch is on its way go in the next one.
"""
import logging
import os
import time

import gevent
import gevent.event
import redis
from flask import current_app

from . import events, publisher

log = logging.getLogger(__name__)

# Frames a job may send back to back after a quiet spell. A provider streaming right at
# TICKER_MAX_FPS jitters around it; without this slack every early delta would wait.
BURST_FRAMES = 2
# Every job is asked whether its visitor pressed Stop this often: a Stop takes effect within it.
STOP_CHECK_SECONDS = 0.2
PUBLISH_RETRY_SECONDS = 1  # while Redis is unreachable, try a job's frame this often


class StopJob(gevent.GreenletExit):
    """The visitor pressed Stop. A BaseException, so no provider code mistakes it for an error."""


class Ticker:
    """The frames of one process's (and gevent hub's) streaming jobs."""

    def __init__(self, app):
        self.app, self.interval = app, 1 / app.config["TICKER_MAX_FPS"]
        self.jobs = {}  # Progress -> the greenlet streaming it, told of a Stop
        self.changed = {}  # Progress -> the time its next frame may go (a dict: ordered, no doubles)
        # Progress -> [frame credits, when last refilled]: a bucket refilled one credit per
        # interval, up to BURST_FRAMES. A delta arriving with a credit left is published at once,
        # so a viewer sees it within milliseconds; deltas arriving faster than the limit wait for
        # the next credit and go out together in one frame.
        self.credits = {}
        self.wake = gevent.event.Event()
        self.idle = gevent.event.Event()  # no batch is on its way to Redis
        self.idle.set()
        self.in_flight = ()
        self.greenlet = None
        self.stop_check_at = 0.0

    def join(self, progress, streamer):
        """Tick progress from now on; tell streamer (raise StopJob in it) if its visitor stops."""
        self.credits[progress] = [float(BURST_FRAMES), time.monotonic()]
        progress.ticker = self
        self.jobs[progress] = streamer
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)

    def mark(self, progress):
        """Note that progress has something new to show."""
        if progress not in self.changed and progress in self.jobs:
            self.changed[progress] = 0.0
            self.wake.set()

    def leave(self, progress):
        """Tick progress no more, once a frame of it that is on its way has been answered."""
        self.jobs.pop(progress, None)
        self.changed.pop(progress, None)
        self.credits.pop(progress, None)
        progress.ticker = None
        while progress in self.in_flight:
            self.idle.wait()

    def _run(self):
        try:
            with self.app.app_context():
                while self.jobs:
                    self.wake.wait(self._timeout())
                    self.wake.clear()
                    try:
                        self._tick()
                    except Exception:  # a fault in one batch must not end every job's ticker
                        log.exception("ticker: a batch of frames failed")
                        gevent.sleep(PUBLISH_RETRY_SECONDS)
        finally:
            self.greenlet = None

    def _timeout(self):
        now = time.monotonic()
        soonest = min(self.changed.values(), default=now + STOP_CHECK_SECONDS)
        return max(0.0, min(soonest, self.stop_check_at) - now)

    def _tick(self):
        """Send one batch: a frame for each changed job that may send one, and any Stop checks."""
        now = time.monotonic()
        due = self._due(now)
        checks = ()
        if now >= self.stop_check_at:
            checks, self.stop_check_at = tuple(self.jobs), now + STOP_CHECK_SECONDS
        if not due and not checks:
            return
        # From the first frame built until the last reply is read, a job that ends waits in
        # leave(): its last frame must come after this one, and count from what this one sent.
        self.in_flight = {progress for progress, _ in due}
        self.idle.clear()
        try:
            stops = self._send(due, checks, now)
        finally:
            self.in_flight = ()
            self.idle.set()
        for progress in stops:
            streamer = self.jobs.get(progress)
            if streamer is not None:
                self.leave(progress)
                streamer.kill(StopJob, block=False)  # raised where it waits on the provider

    def _due(self, now):
        """Return the changed jobs that may send a frame now, with their credits; the others wait."""
        due = []
        for progress, at in tuple(self.changed.items()):
            if at > now:
                continue  # waiting for a frame credit (or a retry); not pushed back by others' ticks
            bucket = self.credits[progress]
            bucket[:] = min(BURST_FRAMES, bucket[0] + (now - bucket[1]) / self.interval), now
            if bucket[0] >= 1:
                del self.changed[progress]
                due.append((progress, bucket))
            else:
                self.changed[progress] = now + (1 - bucket[0]) * self.interval
        return due

    def _send(self, due, checks, now):
        """Build and send the frames of due and the Stop checks of checks; return who asked to stop."""
        commands, frames = [], []
        for progress, bucket in due:
            try:
                built = progress.frame()
            except Exception:  # one job's fault must not stop every other job's ticker
                log.exception("job %s: could not build a ticker frame", progress.job.id)
                continue
            if built is not None:  # else nothing the viewers see has changed
                bucket[0] -= 1
                frames.append((progress, len(commands), built))
                commands += built[0]
        checked = len(commands)
        commands += [events.stop_command(progress.job) for progress in checks]
        if not commands:
            return ()
        try:
            replies = publisher.send(commands, raise_replies=False)
        except redis.RedisError as error:
            log.warning("ticker frames not published, Redis is unreachable (%s)", error)
            for progress, _, _ in frames:
                self._retry(progress, now)
            return ()
        for progress, at, (sent, length_at) in frames:
            mine = replies[at:at + len(sent)]
            if any(isinstance(reply, redis.ResponseError) for reply in mine):
                self._retry(progress, now)
            else:
                progress.published(mine[length_at])
        return [progress for progress, reply in zip(checks, replies[checked:]) if reply == 1]

    def _retry(self, progress, now):
        progress.unpublished()
        if progress in self.jobs:
            self.changed[progress] = now + PUBLISH_RETRY_SECONDS


def ticker():
    """Return this process's (app's and gevent hub's) ticker."""
    tickers = current_app.extensions.setdefault("tickers", {})
    key = (os.getpid(), id(gevent.get_hub()))
    if key not in tickers:
        tickers[key] = Ticker(current_app._get_current_object())
    return tickers[key]
