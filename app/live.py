"""The live state of an executing job, kept beside the event bus so any viewer can catch up."""
from dataclasses import dataclass

from . import bus

TTL_SECONDS = 24 * 3600  # long after the job has ended; by then the database has the answer


@dataclass(frozen=True)
class LiveState:
    tokens: int
    output_tokens: int
    msat: int
    thinking: int
    text: str


def _keys(job):
    return f"job:{job.channel}:figures", f"job:{job.channel}:text"


def write(pipe, job, *, tokens, output_tokens, msat, thinking, text, whole=None):
    """Queue the new text (or the whole text so far) and the absolute figures on a Redis pipeline.

    The pipeline's first reply is then the length in bytes of the text Redis holds.
    """
    figures, text_key = _keys(job)
    if whole is None:
        pipe.append(text_key, text.encode("utf-8"))
    else:
        pipe.set(text_key, whole.encode("utf-8")).strlen(text_key)
    pipe.hset(figures, mapping={"tokens": tokens, "output_tokens": output_tokens, "msat": msat,
                                "thinking": thinking})
    pipe.expire(figures, TTL_SECONDS)
    pipe.expire(text_key, TTL_SECONDS)


def read(job):
    """Return the job's live state, or None before its first frame."""
    figures, text_key = _keys(job)
    with bus.client().pipeline(transaction=True) as pipe:
        values, text = pipe.hgetall(figures).get(text_key).execute()
    if not values:
        return None
    return LiveState(int(values[b"tokens"]), int(values[b"output_tokens"]), int(values[b"msat"]),
                     int(values.get(b"thinking", 0)), (text or b"").decode("utf-8"))
