"""Server-Sent Events over flask-sse and Redis, with its known faults fixed.

flask-sse as shipped opens a Redis connection per publish, sends nothing until the first event,
loses a leading space and line breaks, and has no replay. Here: one shared pool, an immediate
comment and a heartbeat, exact framing, and a snapshot of the current state on (re)connect.
"""
import logging

import redis
from flask import current_app, request, stream_with_context
from flask_sse import Message, ServerSentEventsBlueprint

from . import bus, fanout, fastjson, fragments, live, publisher, resp
from .models import Job, db

log = logging.getLogger(__name__)


class Frame(Message):
    """An SSE message whose data arrives intact: every line break kept, leading spaces kept."""

    def __str__(self):
        text = event_text(self.data, self.type)
        return text if self.id is None else f"{text[:-1]}id: {self.id}\n\n"


def event_text(data, kind=None):
    """Return one SSE event: its type, then its data with every line break and leading space kept."""
    # The SSE parser splits only on CR, LF and CRLF and strips one space after "data:". A
    # function, not a Frame: each viewer formats two of these for every streamed token.
    lines = data.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\ndata: ")
    return f"event: {kind}\ndata: {lines}\n\n" if kind else f"data: {lines}\n\n"


class JobEvents(ServerSentEventsBlueprint):
    @property
    def redis(self):
        return bus.client()

    def publish_frames(self, job, frames):
        """Publish frames to the job's channel (False if Redis is unreachable; the job goes on)."""
        return send(job, frame_commands(job, frames)) is not None

    def stream_job(self, job, on_close=lambda: None):
        """Stream a job's events to its owner: a comment at once, the current state, then live frames.

        While Redis is unreachable the stream stays open: the viewer is told that the live view is
        reconnecting and, once the subscription is back, gets a fresh snapshot, so it converges on
        the true state (the final panel included) without a reload.
        """
        hub = fanout.hub(current_app.config["REDIS_URL"])
        sock = request.environ.get("gunicorn.socket")
        heartbeat = current_app.config["SSE_HEARTBEAT_SECONDS"]
        job_id, name = job.id, channel(job)
        closed = []

        def release():
            if not closed:
                closed.append(True)
                on_close()

        def join(timeout):
            # Confirmed before any snapshot is read, so nothing falls between the two.
            try:
                viewer = hub.join(name, timeout=timeout, heartbeat=heartbeat)
            except ConnectionError:
                return None  # Redis is unreachable
            viewer.watch_hangup(sock)
            return viewer

        @stream_with_context
        def generate():
            viewer = None
            try:
                yield ": connected\nretry: 2000\n\n"
                viewer = join(1)
                if viewer is None and not hub.down:
                    viewer = join(fanout.ACK_TIMEOUT)  # slow to confirm, but not known to be down
                # With Redis down, the snapshot comes at once, from the database.
                frames, sent, final = _snapshot(job_id, live=viewer is not None)
                yield from frames
                frames = None  # an idle viewer keeps no copy of the card (with its QR, ~5 KB)
                while not final:
                    if viewer is None:
                        viewer = join(heartbeat)
                        if viewer is None:
                            if hub.stopping:
                                return  # the process is stopping: the browser reconnects elsewhere
                            yield ": heartbeat\n\n"
                            if not _is_final(job_id):
                                continue
                    else:
                        outcome = yield from _relay(viewer, sent, job_id)
                        if outcome is DONE:
                            return
                        if outcome is LOST:
                            viewer.close()
                            viewer = None
                            yield str(Frame(fragments.live_status(job_id, live=False), type="job_live"))
                            continue
                    # Back on Redis, a frame missed, or the job ended unseen: start over.
                    frames, sent, final = _snapshot(job_id, live=viewer is not None)
                    yield from frames
                    frames = None
            finally:
                if viewer is not None:
                    viewer.close()
                release()

        response = current_app.response_class(generate(), mimetype="text/event-stream", headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx-style proxies must not hold frames back
        })
        # A stream closed before its first chunk never runs generate's finally.
        response.call_on_close(release)
        return response


    def snapshot_once(self, job):
        """Send the job as it is now and end the stream: the browser asks again in a few seconds.

        For a tab past the visitor's cap of live views. A refusal (429) would leave it showing
        whatever it last had, a pay button on a job already paid, until the job ended; this way
        it follows the job every few seconds, and holds no connection in between.
        """
        frames, _, _ = _snapshot(job.id, live=False, crowded=True)
        body = f": too many live views\nretry: {CROWDED_RETRY_SECONDS * 1000}\n\n" + "".join(frames)
        return current_app.response_class(body, mimetype="text/event-stream",
                                          headers={"Cache-Control": "no-cache"})


DONE, LOST, RESYNC = object(), object(), object()  # why a viewer's relay of frames ended
CROWDED_RETRY_SECONDS = 5  # how often a tab past the cap of live views is sent the job again


def _snapshot(job_id, live, crowded=False):
    """Return the job's current state as SSE text, the answer characters it holds, and finality."""
    job = db.session.get(Job, job_id, populate_existing=True)
    ctx = fragments.job_context(job)
    frames = [Frame(fragments.card(job, ctx), type="job_state")]
    if job.is_final:
        # Nothing is live any more: the notice (outside the card) goes before the final panel
        # closes the stream, or a job that ended during an outage would say "reconnecting" for good.
        frames.insert(0, Frame(fragments.live_status(job.id, live=True), type="job_live"))
        frames.append(Frame(fragments.final_panel(job), type="job_complete"))
    else:
        frames.append(Frame(fragments.live_status(job.id, live=live, crowded=crowded), type="job_live"))
    final, sent = job.is_final, ctx["sent_chars"]
    out = [str(frame) for frame in frames]
    # Render first, then end the session: a stream must hold no database connection for its
    # lifetime, or a few viewers would drain the pool, and an idle viewer keeps no rows (nor a
    # session object: removed, not just closed).
    db.session.remove()
    return out, sent, final


def _is_final(job_id):
    final = db.session.get(Job, job_id, populate_existing=True).is_final
    db.session.remove()
    return final


def _relay(viewer, sent, job_id):
    """Yield the viewer's frames as SSE text; return why it stopped: DONE, LOST or RESYNC."""
    while True:
        messages = viewer.get_ready()  # the hub hands it HEARTBEAT after a quiet period
        # Frames that arrived together leave in one write: a ticker frame and its answer text
        # are one send to the browser, not two.
        out, sent, outcome = _render(messages, sent)
        if out:
            yield out
        if outcome is not None:
            return outcome
        if not out and fanout.HEARTBEAT in messages:
            yield ": heartbeat\n\n"
            # A final frame lost to a Redis hiccup must not leave the viewer waiting for ever.
            if _is_final(job_id):
                return RESYNC


def _render(messages, sent):
    """Return the SSE text for messages, the answer characters sent, and why to stop (or None)."""
    out = []
    for message in messages:
        if message is fanout.LEFT or message is fanout.OVERFLOW:
            return "".join(out), sent, DONE  # gone, or too slow: a browser still there reconnects
        if message is fanout.LOST:
            return "".join(out), sent, LOST
        if message is fanout.HEARTBEAT:
            continue
        frame = fastjson.loads(message)
        kind = frame["type"]
        if kind == "job_answer" or "answer" in frame:
            if frame["start"] > sent:
                return "".join(out), sent, RESYNC  # a frame went missing: the snapshot has it all
            text, sent = _unsent_part(frame, sent)
            if text is None:
                continue  # all in the viewer's snapshot already, and so were its (older) figures
            if kind != "job_answer":  # a ticker frame carrying new text: the ticker goes first
                out.append(event_text(frame["data"], kind))
            out.append(event_text(text, "job_answer"))
            continue
        out.append(event_text(frame["data"], kind))
        if kind == "job_complete":
            return "".join(out), sent, DONE
    return "".join(out), sent, None


def _unsent_part(frame, sent):
    """Return a frame's answer text (escaped) that this viewer has not had yet (its snapshot may
    overlap it), or None; and the answer characters sent after it."""
    start, text = frame["start"], frame["text"]
    end = start + len(text)
    if end <= sent:
        return None, sent
    if start < sent:
        return fragments.answer_chunk(text[sent - start:]), end
    return frame.get("answer", frame.get("data")), end


sse = JobEvents("events", __name__)


def request_stop(job):
    """Ask whichever process runs the job to stop it (it checks at every ticker tick)."""
    bus.client().set(_stop_key(job), 1, ex=3600)


def _stop_key(job):
    return f"job:{job.channel}:stop"


def channel(job):
    """Return the job's Redis channel: named by a random secret, not by the job id."""
    return f"job:{job.channel}"


def stop_command(job):
    """Return the command whose reply says whether the job's visitor asked to stop it."""
    return resp.command("EXISTS", _stop_key(job))


def frame_commands(job, frames):
    """Return the commands that publish frames to the job's channel, in flask-sse's format."""
    name = channel(job)
    return [resp.command("PUBLISH", name, fastjson.dumps(frame)) for frame in frames]


def send(job, commands):
    """Send commands with the process's next batch; return their replies, or None if Redis is unreachable.

    The database holds what matters: a job goes on without Redis, and its viewers get a fresh
    snapshot once Redis is back.
    """
    try:
        return publisher.send(commands)
    except redis.RedisError as error:
        log.warning("job %s: frames not published, Redis is unreachable (%s)", job.id, error)
        return None


def publish_state(job):
    """Publish the job card; on a final state also the final panel, which ends the viewers' streams."""
    frames = [{"type": "job_state", "data": fragments.card(job)}]
    if job.is_final:
        frames.append({"type": "job_complete", "data": fragments.final_panel(job)})
    sse.publish_frames(job, frames)


def progress_commands(job, *, tokens, output_tokens, msat, text, start, thinking=False, whole=None,
                      expire=True):
    """Return the commands that publish a ticker frame (absolute figures) and any new answer text,
    after those that update the live state; and the index of the reply that is the length in bytes
    of the answer text Redis then holds (`whole` rewrites it all)."""
    figures = {"tokens": tokens, "output_tokens": output_tokens, "msat": msat, "thinking": int(thinking)}
    frame = {"type": "job_progress", "data": fragments.ticker(job, **figures)}
    if text:
        # The new text rides in the ticker's message: one message a frame for Redis, the fan-out
        # and each viewer, instead of two. A viewer sends it on as its own job_answer event.
        frame.update(answer=fragments.answer_chunk(text), start=start, text=text)
    commands = live.commands(job, **figures, text=text, whole=whole, expire=expire)
    return commands + frame_commands(job, [frame]), (1 if whole is not None else 0)


def publish_progress(job, *, check_stop=True, **frame):
    """Publish a ticker frame and any new answer text (see progress_commands) now.

    Return (the length in bytes of the answer text Redis now holds, whether the visitor asked to
    stop, or False unless check_stop), or None if Redis is unreachable.
    """
    commands, length_at = progress_commands(job, **frame)
    replies = send(job, commands + [stop_command(job)] if check_stop else commands)
    if replies is None:
        return None
    return replies[length_at], check_stop and bool(replies[-1])
