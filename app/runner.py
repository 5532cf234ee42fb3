"""Run a paid job: provider delta -> meter -> pricing -> fragment -> publish, then settle the bill."""
import logging
import time

import gevent
import gevent.event
from flask import copy_current_request_context, current_app

from . import events, pricing, refunds
from .agent import ProviderError, TextDelta, Thinking, Usage, get_agent
from .jobs import transition
from .metering import Meter, count_tokens
from .models import CostLedger, Job, db

log = logging.getLogger(__name__)


# Frames the ticker may send back to back after a quiet spell. A provider streaming right at
# TICKER_MAX_FPS jitters around it; without this slack every early delta would wait.
BURST_FRAMES = 2


class StopJob(gevent.GreenletExit):
    """The visitor pressed Stop. A BaseException, so no provider code mistakes it for an error."""


class Progress:
    """What has streamed so far, and what of it the viewers have been sent."""

    def __init__(self, job, input_tokens, encoding):
        self.job = job
        self.input_tokens = input_tokens
        self.meter = Meter(encoding)
        self.text = ""  # what has been counted; deltas wait in pending until the next look
        self.pending = []
        self.sent = 0  # characters of text already published
        self.tariff = pricing.tariff()
        self.thinking = False  # hidden reasoning reported while no text has arrived
        self.changed = gevent.event.Event()  # something arrived since the ticker last looked
        self.done = False

    def add(self, delta):
        # Deltas are counted when the ticker looks, not one by one as they arrive: one meter
        # call per frame instead of one per delta keeps counting near the cost of one encode.
        self.pending.append(delta)
        self.changed.set()

    def absorb(self):
        """Count the deltas that arrived since the last look."""
        if self.pending:
            text = "".join(self.pending)
            self.pending.clear()
            self.text += self.meter.feed(text)

    def think(self, thinking):
        self.thinking = thinking
        self.changed.set()

    def end(self):
        """Tell the ticker that the stream is over (the caller sends the last frame)."""
        self.done = True
        self.changed.set()

    def flush(self):
        """Publish one ticker frame with absolute figures, plus the text not yet sent.

        Return whether the visitor has asked to stop (read in the same Redis round trip).
        """
        self.absorb()
        output_tokens = self.meter.tokens
        msat = pricing.charge_msat(self.tariff, self.job.model, self.input_tokens, output_tokens,
                                   self.job.btc_usd)
        start, self.sent = self.sent, len(self.text)
        return events.publish_progress(self.job, tokens=self.input_tokens + output_tokens,
                                       output_tokens=output_tokens, msat=msat, thinking=self.thinking,
                                       text=self.text[start:], start=start)

    def flush_every(self, interval, runner):
        """Flush as soon as something new arrives, at most once per interval on average; pass on a Stop."""
        # A bucket of frame credits, refilled one per interval: a delta arriving with a credit
        # left is published at once, so a viewer sees it within milliseconds; deltas arriving
        # faster than the limit wait for the next credit and go out together in one frame.
        last, credit, at = None, float(BURST_FRAMES), time.monotonic()
        while True:
            self.changed.wait(interval)  # idle: wake anyway to look for a Stop
            credit, at = self._refill(credit, at, interval)
            if credit < 1 and not self.done:
                gevent.sleep((1 - credit) * interval)
                credit, at = self._refill(credit, at, interval)
            self.changed.clear()
            if self.done:
                return
            self.absorb()
            mark = (len(self.text), self.meter.tokens, self.thinking)
            if mark != last:
                stop = self.flush()
                last, credit = mark, credit - 1
            else:
                stop = events.stop_requested(self.job)
            if stop:
                runner.kill(StopJob, block=False)  # raised where the runner waits on the provider
                return

    @staticmethod
    def _refill(credit, at, interval):
        now = time.monotonic()
        return min(BURST_FRAMES, credit + (now - at) / interval), now


def execute(job_id):
    """Stream Timmy's answer for a paid job, tick the cost live, then settle and complete it."""
    job = db.session.get(Job, job_id)
    agent = get_agent()
    progress = Progress(job, count_tokens(agent.prompt(job.request)), agent.encoding)
    # A stream lasts minutes: hold no database connection meanwhile, or a few dozen jobs at
    # once would drain the pool and every other request would wait. The ticker needs only the
    # job's loaded columns; settling loads it again.
    db.session.expunge(job)
    db.session.rollback()
    progress.flush()  # the ticker starts at the input tokens at once
    # The ticker runs in its own greenlet, which starts with no context of its own.
    ticker = gevent.spawn(copy_current_request_context(progress.flush_every),
                          1 / current_app.config["TICKER_MAX_FPS"], gevent.getcurrent())
    usage, error, note = None, None, None
    # The visitor paid for the estimate; a little headroom lets an answer finish its sentence.
    cap = int(job.estimated_output_tokens * 1.25) + 16
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
    except ProviderError as failure:
        error = f"{failure} You are charged only for what was produced."
    except Exception:
        log.exception("job %s failed while streaming", job_id)
        error = "Timmy stopped before finishing the answer. You are charged only for what was produced."
    finally:
        # Let the ticker finish a frame it has begun rather than kill it inside a Redis call.
        progress.end()
        ticker.join()
    progress.absorb()
    progress.text += progress.meter.finish()
    progress.thinking = False
    progress.flush()  # the last frame is always delivered
    settle(db.session.get(Job, job_id), progress, usage, error, note)


def settle(job, progress, usage, error=None, note=None):
    """Write the cost ledger from the provider's usage (or our exact count) and end the job."""
    if usage is None and error and not progress.text:
        # Failed before the first token: providers bill nothing for that, and neither do we.
        usage, source = Usage(0, 0), "estimate"
    elif usage is None:
        # No usage reported: bill the Workshop's own exact count, and say so in the ledger.
        usage, source = Usage(progress.input_tokens, progress.meter.tokens), "estimate"
    else:
        source = "provider"
    actual_msat = pricing.charge_msat(progress.tariff, job.model, usage.input_tokens, usage.output_tokens,
                                      job.btc_usd, usage.cache_read_tokens, usage.cache_write_tokens)
    work, eval_ = job.invoice("work"), job.invoice("eval")
    refund_owed_msat = pricing.refund_owed_msat(work.amount_msat, actual_msat)
    db.session.add(CostLedger(
        job_id=job.id, model=job.model, eval_fee_msat=eval_.amount_msat,
        estimated_msat=work.amount_msat, paid_msat=work.amount_msat, actual_msat=actual_msat,
        refund_owed_msat=refund_owed_msat,
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens, estimated_output_tokens=job.estimated_output_tokens,
        usage_source=source, btc_usd=job.btc_usd))
    refunds.owe(job, refund_owed_msat, "overpaid")  # committed with the job's final state
    if error:
        transition(job, "executing", "failed", result=progress.text, error_message=error)
    else:
        transition(job, "executing", "complete", result=progress.text, reason=note or job.reason)
