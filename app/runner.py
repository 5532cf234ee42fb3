"""Run a paid job: provider delta -> meter -> pricing -> fragment -> publish, then settle the bill."""
import logging

import gevent

from . import events, pricing, recovery, refunds, ticker, turns
from .agent import ProviderError, TextDelta, Thinking, Usage, get_agent
from .jobs import transition
from .metering import Meter, count_tokens
from .models import CostLedger, Job, db
from .ticker import StopJob

log = logging.getLogger(__name__)
active = {}  # job id -> the greenlet executing it in this process
INTERRUPTED = ("Timmy was interrupted: the Workshop restarted while he worked. You are charged only "
               "for the answer so far; the rest of what you paid is owed back to you.")


class Interrupted(gevent.GreenletExit):
    """This process is shutting down: end the job now, billed for what was written."""


class Progress:
    """What has streamed so far, and what of it the viewers have been sent."""

    def __init__(self, job, input_tokens, encoding):
        self.job = job
        self.input_tokens = input_tokens
        self.meter = Meter(encoding)
        self.text = ""  # what has been counted; deltas wait in pending until the next frame
        self.pending = []
        self.sent = 0  # characters of text already published
        self.sent_bytes = 0  # the same, as UTF-8: the length Redis should hold
        self.resync = False  # a frame was lost: the next one rewrites the live state whole
        self.first = True  # the first frame published also sets the live state's expiry
        self.tariff = pricing.tariff()
        self.thinking = False  # hidden reasoning reported while no text has arrived
        self.shown = None  # what the last frame showed: text length, tokens, thinking
        self.unsent = None  # what the frame built last shows, and the text's end and UTF-8 length
        self.ticker = None  # the process's ticker, while it ticks this job

    def add(self, delta):
        # Deltas are counted when a frame is built, not one by one as they arrive: one meter
        # call per frame instead of one per delta keeps counting near the cost of one encode.
        self.pending.append(delta)
        if self.ticker is not None:
            self.ticker.mark(self)

    def absorb(self):
        """Count the deltas that arrived since the last look."""
        if self.pending:
            text = "".join(self.pending)
            self.pending.clear()
            self.text += self.meter.feed(text)

    def think(self, thinking):
        if thinking != self.thinking:
            self.thinking = thinking
            if self.ticker is not None:
                self.ticker.mark(self)

    def frame(self, always=False):
        """Return a ticker frame's commands (absolute figures, plus the text not yet sent) and the
        index of the reply that gives the text's length in Redis; None if nothing shown changed."""
        self.absorb()
        output_tokens = self.meter.tokens
        shown = (len(self.text), output_tokens, self.thinking)
        if shown == self.shown and not always:
            return None
        msat = pricing.charge_msat(self.tariff, self.job.model, self.input_tokens, output_tokens,
                                   self.job.btc_usd)
        start, end = self.sent, len(self.text)
        new = self.text[start:end]
        self.unsent = (shown, end, self.sent_bytes + len(new.encode("utf-8")))
        return events.progress_commands(
            self.job, tokens=self.input_tokens + output_tokens, output_tokens=output_tokens, msat=msat,
            thinking=self.thinking, text=new, start=start, expire=self.first,
            whole=self.text[:end] if self.resync else None)

    def published(self, length):
        """Note that the frame built last reached Redis, which now holds length bytes of text."""
        self.shown, self.sent, self.sent_bytes = self.unsent
        self.first = False
        # A Redis restarted in between has lost the earlier text: rewrite it whole next time.
        self.resync = length != self.sent_bytes

    def unpublished(self):
        """Note that the frame built last was lost: the next one rewrites the live state whole."""
        self.resync = True

    def flush(self):
        """Publish a ticker frame now, outside the ticker (the first and the last of a job)."""
        commands, length_at = self.frame(always=True)
        replies = events.send(self.job, commands)
        if replies is None:
            self.unpublished()  # Redis is unreachable: viewers catch up from a snapshot later
        else:
            self.published(replies[length_at])


def execute(job_id):
    """Stream Timmy's answer for a paid job, tick the cost live, then settle and complete it."""
    # Starting and settling take turns with other jobs' state changes (app/turns.py); waiting
    # for a turn, this greenlet holds no database connection.
    with turns.take():
        job = db.session.get(Job, job_id)
        agent = get_agent()
        progress = Progress(job, count_tokens(agent.prompt(job.request)), agent.encoding)
        # A stream lasts minutes: hold no database connection meanwhile, or a few dozen jobs at
        # once would drain the pool and every other request would wait. The ticker needs only
        # the job's loaded columns; settling loads it again.
        db.session.expunge(job)
        db.session.rollback()
    try:
        # The lease's renewals checkpoint the answer so far, for a recovery if this process dies.
        with recovery.holding(job_id, "executing", checkpoint=lambda: {
                "result": progress.text, "checkpoint_output_tokens": progress.meter.tokens}):
            outcome = _stream(job, agent, progress)
    except recovery.LeaseLost:
        return  # another process has settled the job from its checkpoint
    with turns.take():
        settle(db.session.get(Job, job_id), progress.text, *outcome)


def _stream(job, agent, progress):
    """Stream the answer into progress; return the usage to bill, its source, and error and note."""
    progress.flush()  # the ticker starts at the input tokens at once
    clock = ticker.ticker()
    clock.join(progress, gevent.getcurrent())
    usage, error, note = None, None, None
    # The visitor paid for the estimate; a little headroom lets an answer finish its sentence.
    cap = int(job.estimated_output_tokens * 1.25) + 16
    active[job.id] = gevent.getcurrent()  # a shutdown interrupts the stream, and only the stream
    try:
        for item in agent.stream(job.request, max_tokens=cap):
            if isinstance(item, TextDelta):
                progress.add(item.text)
                progress.think(False)
            elif isinstance(item, Thinking):
                progress.think(not progress.text and not progress.pending)
            elif isinstance(item, Usage):
                usage = item  # cumulative: the latest report wins
    except StopJob:
        note = "You stopped Timmy; you pay only for what he wrote."
    except Interrupted:
        error = INTERRUPTED
    except ProviderError as failure:
        error = f"{failure} You are charged only for what was produced."
    except Exception:
        log.exception("job %s failed while streaming", job.id)
        error = "Timmy stopped before finishing the answer. You are charged only for what was produced."
    finally:
        active.pop(job.id, None)
        # A frame of this job on its way to Redis is answered first: the last one comes after it.
        clock.leave(progress)
    progress.absorb()
    progress.text += progress.meter.finish()
    progress.thinking = False
    progress.flush()  # the last frame is always sent (if Redis is down, viewers catch up later)
    if usage is None and error and not progress.text:
        # Failed before the first token: providers bill nothing for that, and neither do we.
        return Usage(0, 0), "estimate", error, note
    if usage is None:
        # No usage reported: bill the Workshop's own exact count, and say so in the ledger.
        return Usage(progress.input_tokens, progress.meter.tokens), "estimate", error, note
    return usage, "provider", error, note


def settle_from_checkpoint(job):
    """End a job whose process died mid-answer: failed, billed for the answer as last checkpointed."""
    text = job.result or ""
    # No answer saved: like a failure before the first token, nothing is billed.
    usage = Usage(job.input_tokens or 0, job.checkpoint_output_tokens or 0) if text else Usage(0, 0)
    return settle(job, text, usage, "checkpoint", INTERRUPTED)


def settle(job, text, usage, source, error=None, note=None):
    """Write the cost ledger and end the job, in one transaction; tell whether this process did."""
    actual_msat = pricing.charge_msat(pricing.tariff(), job.model, usage.input_tokens, usage.output_tokens,
                                      job.btc_usd, usage.cache_read_tokens, usage.cache_write_tokens)
    work, eval_ = job.invoice("work"), job.invoice("eval")
    refund_owed_msat = pricing.refund_owed_msat(work.amount_msat, actual_msat)
    ledger = CostLedger(
        job_id=job.id, model=job.model, eval_fee_msat=eval_.amount_msat,
        estimated_msat=work.amount_msat, paid_msat=work.amount_msat, actual_msat=actual_msat,
        refund_owed_msat=refund_owed_msat,
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens, estimated_output_tokens=job.estimated_output_tokens,
        usage_source=source, btc_usd=job.btc_usd)
    # Owed back with the job's final state, in its transaction (nothing if this process lost it).
    refunds.owe(job, refund_owed_msat, "overpaid")
    # Only the lease holder settles, once: a process that lost the job to a sweep writes nothing.
    leased = recovery.as_holder(ledger)
    if error:
        return transition(job, "executing", "failed", result=text, error_message=error, **leased)
    return transition(job, "executing", "complete", result=text, reason=note or job.reason, **leased)
