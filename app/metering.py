"""Count tokens as the models' tokenizers do, offline and incrementally."""

from __future__ import annotations

import codecs
import functools
import hashlib
import os
import threading
from pathlib import Path

import gevent
import regex
import tiktoken

DEFAULT_ENCODING = "o200k_base"
TIKTOKEN_DIR = Path(__file__).parent / "data" / "tiktoken"

# Each encoding's rank file, named as tiktoken's cache names it (the sha1 of its
# download URL), with the sha256 that tiktoken itself expects of it.
ENCODING_FILES = {
    "o200k_base": ("fb374d419588a4632f3f557e76b4b70aebbca790",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}

# Pieces at the end of the text that more text can still merge or split
# (o200k_base: "x'" + "s" -> "x's"; "\n" + "  " + "\n" -> "\n  \n" rewrites
# the last two; cl100k_base never more than the last one). One spare piece of
# margin; tests/test_metering.py checks that two already suffice.
UNSETTLED_PIECES = 3

# Look for pieces to settle only once the tail has grown this much: a regex
# scan costs microseconds, and on every small chunk it would mostly rescan the
# same unsettled pieces.
SCAN_EVERY_CHARS = 32

# Encoding more text than this at once moves to gevent's threadpool. tiktoken encodes about
# 4 M tokens/s here and releases the GIL while it does, so a big prompt or tail would otherwise
# stall every greenlet of the worker (1 MB: ~85 ms); below this (~1 ms of work) the hand-over to
# a thread costs more than it saves.
POOL_CHARS = 16_384

_load_lock = threading.Lock()


def verify_file(path: Path, sha256: str) -> None:
    """Raise RuntimeError unless the file at path exists and has this sha256."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RuntimeError(f"tokenizer file {path} is missing or unreadable: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise RuntimeError(f"tokenizer file {path} is corrupt: sha256 {actual}, expected {sha256}")


# Cached: loading hashes and parses a rank file of several MB, which takes
# about a second; every request then shares one Encoding.
@functools.lru_cache(maxsize=None)
def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """Load a tiktoken encoding from the files shipped with the app."""
    if name not in ENCODING_FILES:
        raise ValueError(f"unknown encoding {name!r}; shipped: {', '.join(ENCODING_FILES)}")
    filename, sha256 = ENCODING_FILES[name]
    # Check before tiktoken sees the file: on a hash mismatch tiktoken deletes
    # the file and downloads it again, and the app must work offline.
    verify_file(TIKTOKEN_DIR / filename, sha256)
    with _load_lock:
        # Point tiktoken at the shipped files only while loading, so no other
        # tiktoken user in the process downloads into the app's folder.
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_DIR)
        try:
            return tiktoken.get_encoding(name)
        finally:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            if saved is not None:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved


def off_hub(size: int, fn, *args):
    """Return fn(*args), run in gevent's threadpool when size (characters) is large enough to stall."""
    if size < POOL_CHARS:
        return fn(*args)
    # apply() runs fn at once when called from the hub or a pool thread itself.
    return gevent.get_hub().threadpool.apply(fn, args)


def _count(enc: tiktoken.Encoding, text: str) -> int:
    # encode_ordinary: user text may contain "<|endoftext|>"; it is plain text.
    return len(enc.encode_ordinary(text))


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Return the number of tokens in text."""
    return off_hub(len(text), _count, get_encoding(encoding), text)


class Meter:
    """Count the tokens of a streamed text exactly and incrementally."""

    # tiktoken splits text into pieces with a regex and never merges tokens
    # across pieces, so a text's count is the sum of its pieces' counts. Only
    # the last few pieces can still change as text arrives: the ones before
    # them are counted once ("settled") and dropped, and only the short tail
    # after them is kept and re-encoded. Settled pieces are counted one by
    # one, not joined, because a piece can depend on the text after it: "  "
    # before "1" is two pieces, but alone it is one.

    def __init__(self, encoding: str = DEFAULT_ENCODING):
        self._enc = get_encoding(encoding)
        self._pattern = regex.compile(self._enc._pat_str)  # cheap: regex caches patterns
        # errors="replace": a stream cut mid-character must not break metering.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._scan_every = SCAN_EVERY_CHARS
        self._settled = 0
        self._tail = ""
        self._tail_tokens: int | None = 0
        self._scanned = 0  # length of the tail when it was last scanned

    def feed(self, chunk: str | bytes) -> str:
        """Add a chunk of the text and return the decoded text it adds."""
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            text = self._decoder.decode(bytes(chunk))
        else:
            # Bytes still waiting for the rest of a character end before a str.
            text = self._decoder.decode(b"", final=True) + chunk
        self._add(text)
        return text

    def finish(self) -> str:
        """Flush a dangling partial character and return the text it adds."""
        text = self._decoder.decode(b"", final=True)
        self._add(text)
        return text

    @property
    def tokens(self) -> int:
        """Return the exact token count of all the text fed so far."""
        if self._tail_tokens is None:
            self._tail_tokens = off_hub(len(self._tail), _count, self._enc, self._tail)
        return self._settled + self._tail_tokens

    def _add(self, text: str) -> None:
        """Append text to the tail and settle the pieces that can no longer change."""
        if not text:
            return
        self._tail += text
        self._tail_tokens = None
        if len(self._tail) - self._scanned < self._scan_every:
            return
        # A large chunk, or a long tail finished at once, is settled off the hub.
        settled, self._tail = off_hub(len(self._tail), self._settle, self._tail)
        self._settled += settled
        self._scanned = len(self._tail)

    def _settle(self, tail: str) -> tuple[int, str]:
        """Return the tokens of tail's settled pieces and the unsettled rest."""
        starts = [m.start() for m in self._pattern.finditer(tail)]
        if len(starts) <= UNSETTLED_PIECES:
            return 0, tail
        bounds = starts[: len(starts) - UNSETTLED_PIECES + 1]
        encode = self._enc.encode_ordinary
        return sum(len(encode(tail[a:b])) for a, b in zip(bounds, bounds[1:])), tail[bounds[-1]:]
