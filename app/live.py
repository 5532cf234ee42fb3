"""The live state of an executing job, kept beside the event bus so any viewer can catch up."""
from dataclasses import dataclass

from . import bus, resp

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


def commands(job, *, tokens, output_tokens, msat, thinking, text, whole=None, expire=True):
    """Return the commands that add the new text (or the whole text so far) and the absolute figures.

    The first reply to them is then the length in bytes of the text Redis holds. The keys' expiry
    is set when `expire` (a job's first frame) or when the text is written whole: APPEND and HSET
    keep it, so a job's later frames need not send it again.
    """
    figures, text_key = _keys(job)
    if whole is None:
        out = [resp.command("APPEND", text_key, text.encode("utf-8"))]
    else:
        out = [resp.command("SET", text_key, whole.encode("utf-8"), "EX", TTL_SECONDS),
               resp.command("STRLEN", text_key)]
    out.append(resp.command("HSET", figures, "tokens", tokens, "output_tokens", output_tokens,
                            "msat", msat, "thinking", thinking))
    if expire or whole is not None:
        out += [resp.command("EXPIRE", figures, TTL_SECONDS), resp.command("EXPIRE", text_key, TTL_SECONDS)]
    return out


def read(job):
    """Return the job's live state, or None before its first frame."""
    figures, text_key = _keys(job)
    with bus.client().pipeline(transaction=True) as pipe:
        values, text = pipe.hgetall(figures).get(text_key).execute()
    if not values:
        return None
    return LiveState(int(values[b"tokens"]), int(values[b"output_tokens"]), int(values[b"msat"]),
                     int(values.get(b"thinking", 0)), (text or b"").decode("utf-8"))
