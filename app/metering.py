"""Count tokens as the models' tokenizers do, offline and incrementally."""

from __future__ import annotations

import codecs
import functools
import hashlib
import os
import threading
import unicodedata
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

# Cut the tail at its last word end once it has grown this much: one encode
# call then counts a whole stretch of text, so a streamed answer costs about
# what one encode of all of it does, instead of a call per piece.
CUT_EVERY_CHARS = 256

# Reading the count cuts a tail longer than this first, so a read re-encodes
# at most about a word.
READ_CUT_CHARS = 32

# A tail that still has no word end to cut at (text without spaces: CJK, long
# code lines) is scanned for pieces to settle once it has grown this much.
SCAN_EVERY_CHARS = 512

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
    # after them is kept and re-encoded.
    #
    # Two ways to settle. Usually: cut the tail just before a space that
    # follows a letter or digit. A piece never reaches across such a space
    # (letters and digits end their piece; a space begins the next one), so
    # the text before it splits into the same pieces alone as in the whole
    # text, and one encode counts it all. Else: scan the tail with the regex
    # and settle all but its last few pieces, counted one by one, because a
    # piece can depend on the text after it ("  " before "1" is two pieces,
    # but alone it is one).

    def __init__(self, encoding: str = DEFAULT_ENCODING):
        self._enc = get_encoding(encoding)
        self._pattern = regex.compile(self._enc._pat_str)  # cheap: regex caches patterns
        # errors="replace": a stream cut mid-character must not break metering.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cut_every = CUT_EVERY_CHARS
        self._scan_every = SCAN_EVERY_CHARS  # also sets _settle_every
        self._bytes = False  # bytes were fed: str chunks must flush the decoder first
        self._settled = 0
        self._tail = ""
        self._tail_tokens: int | None = 0
        self._scanned = 0  # length of the tail when it was last scanned

    def feed(self, chunk: str | bytes) -> str:
        """Add a chunk of the text and return the decoded text it adds."""
        if chunk.__class__ is str and not self._bytes:
            # What providers send: one call per small delta, so the common case stays short.
            self._tail += chunk
            self._tail_tokens = None
            if len(self._tail) - self._scanned >= self._settle_every:
                self._settle_tail()
            return chunk
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            self._bytes = True
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
            if len(self._tail) > READ_CUT_CHARS:
                self._cut()  # counted now either way: better once, than again at every read
            self._tail_tokens = off_hub(len(self._tail), _count, self._enc, self._tail)
        return self._settled + self._tail_tokens

    def _add(self, text: str) -> None:
        """Append text to the tail and settle the pieces that can no longer change."""
        if not text:
            return
        self._tail += text
        self._tail_tokens = None
        if len(self._tail) - self._scanned >= self._settle_every:
            self._settle_tail()

    @property
    def _scan_every(self) -> int:
        return self._scan

    @_scan_every.setter
    def _scan_every(self, chars: int) -> None:
        # Tests scan more often than the default; feed() compares against one number.
        self._scan = chars
        self._settle_every = min(self._cut_every, chars)

    def _cut(self) -> None:
        """Settle the tail up to its last word end, if it has one."""
        cut = _last_word_end(self._tail)
        if cut:
            self._settled += off_hub(cut, _count, self._enc, self._tail[:cut])
            self._tail = self._tail[cut:]
            self._scanned = 0

    def _settle_tail(self) -> None:
        if len(self._tail) - self._scanned >= self._cut_every:
            self._cut()
        tail = self._tail
        if len(tail) - self._scanned >= self._scan_every:
            # A large chunk, or a long tail finished at once, is settled off the hub.
            settled, tail = off_hub(len(tail), self._settle, tail)
            self._settled += settled
            self._scanned = len(tail)
        self._tail = tail

    def _settle(self, tail: str) -> tuple[int, str]:
        """Return the tokens of tail's settled pieces and the unsettled rest."""
        # The regex module may know characters that tiktoken's own (Rust) regex does not yet:
        # a character new to Unicode is a letter to one and not to the other, and the two split
        # differently around it. Settle only before the first character that Python's (older)
        # Unicode tables don't know; the word-end cut, and tiktoken itself, settle past it.
        starts = [m.start() for m in self._pattern.finditer(tail, 0, _known_prefix(tail))]
        if len(starts) <= UNSETTLED_PIECES:
            return 0, tail
        bounds = starts[: len(starts) - UNSETTLED_PIECES + 1]
        encode = self._enc.encode_ordinary
        return sum(len(encode(tail[a:b])) for a, b in zip(bounds, bounds[1:])), tail[bounds[-1]:]


def _known_prefix(text: str) -> int:
    """Return the length of text before its first character unassigned in unicodedata."""
    if text.isascii():
        return len(text)
    return next((i for i, c in enumerate(text) if unicodedata.category(c) == "Cn"), len(text))


def _last_word_end(text: str, tries: int = 8) -> int:
    """Return the index of the last space in text that follows a letter or digit, or 0."""
    at = text.rfind(" ")
    while at > 0 and tries:
        if text[at - 1].isalnum():
            return at
        at, tries = text.rfind(" ", 0, at), tries - 1
    return 0
