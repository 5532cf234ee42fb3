"""Server-Sent Events over flask-sse and Redis, with its known faults fixed.

flask-sse as shipped opens a Redis connection per publish, sends nothing until the first event,
loses a leading space and line breaks, and has no replay. Here: one shared pool, an immediate
comment and a heartbeat, exact framing, and a snapshot of the current state on (re)connect.
"""
import json

import gevent
import gevent.event
from flask import current_app, request, stream_with_context
from flask_sse import Message, ServerSentEventsBlueprint

from . import bus, fanout, fragments, live
from .models import Job, db


class Frame(Message):
    """An SSE message whose data arrives intact: every line break kept, leading spaces kept."""

    def __str__(self):
        # The SSE parser splits only on CR, LF and CRLF and strips one space after "data:".
        data = self.data.replace("\r\n", "\n").replace("\r", "\n")
        lines = [f"event: {self.type}"] if self.type else []
        lines += [f"data: {line}" for line in data.split("\n")]
        if self.id is not None:
            lines.append(f"id: {self.id}")
        return "\n".join(lines) + "\n\n"


class JobEvents(ServerSentEventsBlueprint):
    @property
    def redis(self):
        return bus.client()

    def publish_frames(self, job, frames, live_figures=None):
        """Publish frames to the job's channel, updating its live state in the same transaction.

        Return whether the visitor has asked to stop the job: a running job learns it from the
        round trip it makes anyway.
        """
        return _publisher().send(job, frames, live_figures)

    def stream_job(self, job, on_close=lambda: None):
        """Stream a job's events to its owner: a comment at once, the current state, then live frames."""
        # One Redis subscription per worker, fanned out to this viewer's queue. It is confirmed
        # before the snapshot is read, so nothing falls between the two.
        try:
            viewer = fanout.hub(current_app.config["REDIS_URL"]).join(channel(job))
        except BaseException:
            on_close()
            raise
        viewer.watch_hangup(request.environ.get("gunicorn.socket"))
        heartbeat = current_app.config["SSE_HEARTBEAT_SECONDS"]
        job_id = job.id

        @stream_with_context
        def generate():
            try:
                yield ": connected\nretry: 2000\n\n"
                job = db.session.get(Job, job_id, populate_existing=True)
                ctx = fragments.job_context(job)
                snapshot = [Frame(fragments.card(job, ctx), type="job_state")]
                if job.is_final:
                    snapshot.append(Frame(fragments.final_panel(job), type="job_complete"))
                final, sent = job.is_final, ctx["sent_chars"]
                # Render first, then close the session: a stream must hold no database
                # connection for its lifetime, or a few viewers would drain the pool, and an
                # idle viewer keeps no rows or rendered snapshot in memory.
                db.session.close()
                out = "".join(str(frame) for frame in snapshot)
                del job, ctx, snapshot
                yield out
                del out
                if final:
                    return
                while True:
                    messages = viewer.get_ready(timeout=heartbeat)
                    if not messages:
                        yield ": heartbeat\n\n"
                        continue
                    # Frames that arrived together leave in one write: a ticker frame and its
                    # answer text are one send to the browser, not two.
                    out, sent, ended = _render(messages, sent)
                    if out:
                        yield out
                    if ended:
                        return
            finally:
                viewer.close()
                on_close()

        response = current_app.response_class(generate(), mimetype="text/event-stream", headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx-style proxies must not hold frames back
        })
        # A stream closed before its first chunk never runs generate's finally: leave here too.
        response.call_on_close(viewer.close)
        return response


class Publisher:
    """Send the frames of all of a process's jobs to Redis together, one round trip per batch.

    Hundreds of jobs each publishing twenty frames a second would otherwise make thousands of
    round trips a second, each a send and a receive on the hub. Frames that arrive while a batch
    is on its way go in the next one, so a frame waits at most for one batch ahead of it.
    """

    def __init__(self, client):
        self.client, self.waiting, self.greenlet = client, [], None

    def send(self, job, frames, live_figures):
        """Queue a job's frames for the next batch; return whether its visitor asked to stop."""
        result = gevent.event.AsyncResult()
        self.waiting.append((job, frames, live_figures, result))
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)
        return result.get()

    def _run(self):
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    stops = self._execute(batch)
                except Exception as error:  # every publisher of the batch sees the failure
                    for *_, result in batch:
                        result.set_exception(error)
                    continue
                for (*_, result), stop in zip(batch, stops):
                    result.set(stop)
        finally:
            self.greenlet = None

    def _execute(self, batch):
        with self.client.pipeline(transaction=True) as pipe:
            replies_at = []
            for job, frames, live_figures, _ in batch:
                if live_figures is not None:
                    live.write(pipe, job, **live_figures)
                for frame in frames:
                    pipe.publish(channel(job), json.dumps(frame))
                pipe.exists(_stop_key(job))
                replies_at.append(len(pipe.command_stack) - 1)
            replies = pipe.execute()
        return [bool(replies[at]) for at in replies_at]


def _publisher():
    # One per app and per gevent hub (OS thread): a batch is sent by a greenlet of that hub.
    publishers = current_app.extensions.setdefault("publishers", {})
    key = id(gevent.get_hub())
    if key not in publishers:
        publishers[key] = Publisher(bus.client())
    return publishers[key]


def _render(messages, sent):
    """Return the SSE text for messages, the answer characters sent, and whether the stream ends."""
    out = []
    for message in messages:
        if message is fanout.LEFT:
            return "", sent, True  # nobody to write to
        if message is fanout.LOST or message is fanout.OVERFLOW:
            # Frames may be missing: the browser reconnects to a fresh snapshot.
            return "".join(out), sent, True
        frame = json.loads(message)
        if frame["type"] == "job_answer":
            frame, sent = _unsent_part(frame, sent)
            if frame is None:
                continue
        out.append(str(Frame(frame["data"], type=frame["type"])))
        if frame["type"] == "job_complete":
            return "".join(out), sent, True
    return "".join(out), sent, False


def _unsent_part(frame, sent):
    """Trim an answer frame to the text this viewer has not had yet (its snapshot may overlap it)."""
    start, text = frame["start"], frame["text"]
    end = start + len(text)
    if end <= sent:
        return None, sent
    if start < sent:
        frame = {"type": "job_answer", "data": fragments.answer_chunk(text[sent - start:])}
    return frame, end


sse = JobEvents("events", __name__)


def request_stop(job):
    """Ask whichever process runs the job to stop it (it checks at every ticker tick)."""
    bus.client().set(_stop_key(job), 1, ex=3600)


def stop_requested(job):
    """Tell whether the visitor asked to stop the job."""
    return bool(bus.client().exists(_stop_key(job)))


def _stop_key(job):
    return f"job:{job.channel}:stop"


def channel(job):
    """Return the job's Redis channel: named by a random secret, not by the job id."""
    return f"job:{job.channel}"


def publish_state(job):
    """Publish the job card; on a final state also the final panel, which ends the viewers' streams."""
    frames = [{"type": "job_state", "data": fragments.card(job)}]
    if job.is_final:
        frames.append({"type": "job_complete", "data": fragments.final_panel(job)})
    sse.publish_frames(job, frames)


def publish_progress(job, *, tokens, output_tokens, msat, text, start, thinking=False):
    """Publish a ticker frame (absolute figures) and any new answer text; return stop_requested."""
    figures = {"tokens": tokens, "output_tokens": output_tokens, "msat": msat, "thinking": int(thinking)}
    frames = [{"type": "job_progress", "data": fragments.ticker(job, **figures)}]
    if text:
        frames.append({"type": "job_answer", "data": fragments.answer_chunk(text),
                       "start": start, "text": text})
    return sse.publish_frames(job, frames, live_figures={**figures, "text": text})
