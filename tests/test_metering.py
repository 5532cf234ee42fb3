"""Token metering: exact incremental counts, bytes input, the shipped tokenizer files."""
import copy
import hashlib
import itertools
import os
import random

import pytest
import regex
import tiktoken
import tiktoken.load
import tiktoken.registry
from hypothesis import given, settings
from hypothesis import strategies as st

from app import metering
from app.metering import DEFAULT_ENCODING, Meter, count_tokens, get_encoding

ENCODINGS = ["o200k_base", "cl100k_base"]


def full(text, encoding=DEFAULT_ENCODING):
    """Count text the reference way: one encode of the whole text."""
    return len(get_encoding(encoding).encode_ordinary(text))


def pieces(n, text):
    """Split text into chunks of n characters (or bytes)."""
    return [text[i:i + n] for i in range(0, len(text), n)]


def metered(chunks, encoding=DEFAULT_ENCODING, check_every_step=False, scan_every=None):
    """Feed chunks through a Meter; return its final count and the text it decoded."""
    meter = Meter(encoding)
    if scan_every is not None:
        meter._scan_every = scan_every  # 0: look for pieces to settle on every chunk
    decoded = ""
    for chunk in chunks:
        decoded += meter.feed(chunk)
        if check_every_step:
            assert meter.tokens == full(decoded, encoding), (decoded, chunk)
    decoded += meter.finish()
    return meter.tokens, decoded


PROSE = (
    "It was the best of times, it was the worst of times. Timmy's workshop opened at nine; "
    "customers didn't queue, they wandered in. \"Isn't it late?\" she asked -- and he said "
    "I'LL BE THERE, WE'RE READY, THEY'VE GONE, you'd know, I'm sure, we'll see.\n\n"
    "Mr. O'Neil's cat's toy cost $12.50 (plus 7.5% VAT) on 2024-03-01 at 10:45am…\n"
)
CODE = (
    "def fib(n: int) -> int:\n"
    "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    a, b = 0, 1\n"
    "    for _ in range(n):\n"
    "\ta, b = b, a + b  # tabs and spaces\n"
    "    return a\r\n"
    "\r\n"
    "if __name__ == '__main__':\n"
    "        print(fib(1234567), {'x': [1, 2, 3]}, x's, \"don't\")\n"
    "url = 'https://example.com/a/b//c?q=1&r=2'\n/* C */ x+=1;;  \n\n\n"
)
MARKDOWN = (
    "# Title\n\n## Sub-title\n\n- item **bold** and _it_\n- [link](http://x.y/z)\n"
    "1. one\n2. two\n\n> quote\n> > nested\n\n```python\nprint('hi')\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n***\n---\n   \n\t\n"
)
CJK = "日本語のテキストです。中文文本，带标点！한국어 텍스트입니다. 混合 mixed 文字 123 かな カナ"
EMOJI = (
    "Family 👨‍👩‍👧‍👦 and 👩🏽‍💻 coding, flags 🇫🇷🇩🇪🇯🇵 🏳️‍🌈, keycap 1️⃣ #️⃣, "
    "hearts ❤️❤ 💖, skin 👍🏻👍🏿, 😀😀😀 lone ZWJ \u200d and VS16 \ufe0f."
)
COMBINING = (
    "e\u0301 a\u0308 Zalgo: Z\u0351\u0360\u0322a\u0336\u0318l\u0337g\u0335o\u0338; "
    "\u0301start ..\u0301 'x\u0301"
)
CONTRACTIONS = (
    "don't x's X'S I'LL we're they've she'd I'm 'tis 's 'll ''s x'' x'l x'lL "
    "rock'n'roll O'Reilly's shouldn't've DON'T’s x’s y'all"
)
WHITESPACE = (
    "a  b   c    d\t\te \t \tf\n\ng\n \n  \n   h\r\n\r\ni\r\r\nj \n\t \n k   \n"
    "    \n\n\n\n    l\u00a0\u00a0m\u2028n\x0b\x0co" + " " * 40 + "p" + "\n" * 12 + "q   "
    "r  1  22\t\t3   .   'x \t 4\n  \n 5\u00a0 6 "
)
DIGITS = "1234567 12 3.14159 1,000,000 007 0x1F 1e-9 ١٢٣٤ ⅫⅣ 12345678901234567890a1b22c333"
PUNCT = "!!!???... --- ==> /// <<<>>> .\n/\n;\n\n)) (( [[ ]] {{ }} ~~ `` '' \"\" ,,, .../// \\\\ ^^ @@ ##"
SPECIAL = "before<|endoftext|>after <|endofprompt|> <|fim_prefix|>x<|im_start|>user\n<|endoftext|>"


def _big_text(size=20_000):
    """Build a deterministic ~20 KB mix of all the texts above."""
    rng = random.Random(1234)
    parts = [PROSE, CODE, MARKDOWN, CJK, EMOJI, COMBINING, CONTRACTIONS, WHITESPACE, DIGITS, PUNCT, SPECIAL]
    out = []
    while sum(map(len, out)) < size:
        part = rng.choice(parts)
        start = rng.randrange(len(part))
        out.append(part[start:] + rng.choice(["", " ", "\n", "'", "s", "  ", "\n\n"]) + part[:start])
    return "".join(out)


BIG = _big_text()
TEXTS = {
    "prose": PROSE, "code": CODE, "markdown": MARKDOWN, "cjk": CJK, "emoji": EMOJI,
    "combining": COMBINING, "contractions": CONTRACTIONS, "whitespace": WHITESPACE,
    "digits": DIGITS, "punct": PUNCT, "special": SPECIAL,
}


@pytest.mark.parametrize("scan_every", [0, metering.SCAN_EVERY_CHARS])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", TEXTS)
def test_every_chunk_size_counts_exactly(name, encoding, scan_every):
    text = TEXTS[name]
    for size in range(1, 65):
        # Every intermediate count too, for a few sizes; the final count for all.
        step = size in (1, 2, 3, 5, 8, 13)
        tokens, decoded = metered(pieces(size, text), encoding, step, scan_every)
        assert decoded == text
        assert tokens == full(text, encoding), size


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_big_text_every_chunk_size(encoding):
    assert len(BIG.encode()) >= 20_000
    expected = full(BIG, encoding)
    for size in range(1, 65):
        assert metered(pieces(size, BIG), encoding)[0] == expected, size


@pytest.mark.parametrize("scan_every", [0, 1, metering.SCAN_EVERY_CHARS])
def test_big_text_random_chunks_and_bounded_state(scan_every):
    rng = random.Random(7)
    meter, i = Meter(), 0
    meter._scan_every = scan_every
    while i < len(BIG):
        n = rng.randint(1, 64)
        meter.feed(BIG[i:i + n])
        i += n
        # The meter keeps only a short tail, never the whole text.
        assert len(meter._tail) < metering.SCAN_EVERY_CHARS + 64
    assert meter.tokens == full(BIG)


def test_feed_returns_the_text_and_empty_chunks_are_harmless():
    meter = Meter()
    assert meter.feed("") == ""
    assert meter.feed("hello") == "hello"
    assert meter.feed(b"") == ""
    assert meter.finish() == ""
    assert meter.tokens == full("hello")
    assert Meter().tokens == 0


def test_summing_chunk_counts_would_overcount():
    # Why the Meter exists: BPE merges across chunk boundaries.
    assert count_tokens("x'") + count_tokens("s") > count_tokens("x's")
    assert count_tokens("\n") + count_tokens("  ") + count_tokens("\n") > count_tokens("\n  \n")
    assert metered(["x'", "s"])[0] == count_tokens("x's")
    assert metered(["\n", "  ", "\n"])[0] == count_tokens("\n  \n")


# --- the settle rule --------------------------------------------------------

# Characters that make the last pieces of a text change when more arrives:
# contractions, runs of spaces and newlines, spaces before digits, punctuation.
SMALL_ALPHABET = "a'sl \n1."


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_two_unsettled_pieces_already_suffice(encoding, monkeypatch):
    # The Meter keeps 3; show exactness with one fewer, over every text of up
    # to 5 characters from the alphabet: a first chunk of 1 to 4 characters,
    # then every continuation one character at a time, checked at each step.
    monkeypatch.setattr(metering, "UNSETTLED_PIECES", 2)
    monkeypatch.setattr(metering, "SCAN_EVERY_CHARS", 0)

    def walk(meter, text):
        for char in SMALL_ALPHABET:
            branch = copy.copy(meter)  # shares the decoder, which str input leaves empty
            branch.feed(char)
            assert branch.tokens == full(text + char, encoding), text + char
            if len(text) + 1 < 5:
                walk(branch, text + char)

    for length in range(1, 5):
        for chars in itertools.product(SMALL_ALPHABET, repeat=length):
            first = "".join(chars)
            meter = Meter(encoding)
            meter.feed(first)
            assert meter.tokens == full(first, encoding), first
            walk(meter, first)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_piece_boundaries_stay_put_before_the_last_two_pieces(encoding):
    # The lemma behind the rule: appending any text never moves a piece boundary
    # that lies before the last two pieces. Every text up to 3 characters from
    # the alphabet, every extension up to 2 (the walk above goes further).
    pattern = regex.compile(get_encoding(encoding)._pat_str)

    def ends(s):
        return [m.end() for m in pattern.finditer(s)]

    extensions = ["".join(p) for n in (1, 2) for p in itertools.product(SMALL_ALPHABET, repeat=n)]
    for length in range(1, 4):
        for chars in itertools.product(SMALL_ALPHABET, repeat=length):
            text = "".join(chars)
            settled = ends(text)[:-2]
            for extension in extensions:
                assert set(settled) <= set(ends(text + extension)), (text, extension)


def test_one_unsettled_piece_is_not_enough_for_o200k(monkeypatch):
    # Shows the margin is needed: with a single unsettled piece the count drifts.
    monkeypatch.setattr(metering, "UNSETTLED_PIECES", 1)
    monkeypatch.setattr(metering, "SCAN_EVERY_CHARS", 0)
    assert metered(["don'", "t"])[0] != count_tokens("don't")
    assert metered(["a\n  ", "\n"])[0] != count_tokens("a\n  \n")


# --- property test ------------------------------------------------------------

NASTY = [
    " ", "  ", "   ", "  1", " \n", "\n ", "\t", "\n", "\n\n", "\r", "\r\n", "\x0b", "\u00a0", "\u2028",
    "'", "’", "s", "S", "t", "l", "L", "re", "ve", "d", "m", "x's", "'ll", "I'LL", "don't",
    "0", "1", "7", "123", "a", "A", "z",
    "é", "ß", "İ", "中", "ア", "한", ".", ",", "!", "/", "-", "<", "|", ">", "<|endoftext|>",
    "😀", "👍", "🏽", "\u200d", "\ufe0f", "🇫", "🇷", "\u0301", "\u0308",
]
# Mostly the nasty atoms, which make boundaries move; any character at times.
atoms = st.sampled_from(NASTY)
texts = st.lists(st.one_of(atoms, atoms, atoms, st.characters(exclude_categories=["Cs"])),
                 max_size=40).map("".join)


# How often the Meter looks for pieces to settle: on every chunk, or rarely.
SCANS = st.sampled_from([0, 1, 3, 8, metering.SCAN_EVERY_CHARS])


def cut_flags(n):
    """Draw, for each of n positions, whether to cut there: any set of split points."""
    return st.lists(st.booleans(), min_size=n, max_size=n)


def split_at(text, flags):
    """Cut text after each position whose flag is set."""
    cuts = [i for i, cut in enumerate(flags, 1) if cut]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@st.composite
def split_texts(draw):
    """Draw a text and a list of chunks that concatenate to it."""
    text = draw(texts)
    return text, split_at(text, draw(cut_flags(len(text))))


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("scan_every", [0, 1, 2, 32])
def test_a_character_newer_than_the_tokenizers_unicode_counts_exactly(encoding, scan_every):
    # U+323B0 is a letter to the regex module's Unicode tables but not to tiktoken's: the two
    # split ".s" differently after it, so settling must not trust the regex module there.
    text = "\U000323b0.s  '" * 3
    for n in (1, 2, 5, len(text)):
        assert metered(pieces(n, text), encoding, True, scan_every)[0] == full(text, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=300, deadline=None)
@given(case=split_texts(), scan_every=SCANS)
def test_any_split_counts_exactly(encoding, case, scan_every):
    text, chunks = case
    tokens, decoded = metered(chunks, encoding, True, scan_every)
    assert decoded == text
    assert tokens == len(get_encoding(encoding).encode_ordinary(text))


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=300, deadline=None)
@given(text=texts, data=st.data(), scan_every=SCANS)
def test_any_byte_split_counts_exactly(encoding, text, data, scan_every):
    raw = text.encode()
    chunks = split_at(raw, data.draw(cut_flags(len(raw))))
    tokens, decoded = metered(chunks, encoding, True, scan_every)
    assert decoded == text
    assert tokens == full(text, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=500, deadline=None)
@given(case=split_texts(), cut_every=st.sampled_from([0, 1, 5]))
def test_cutting_at_word_ends_counts_exactly(encoding, case, cut_every):
    # The word-end cut alone (the piece scan switched off), as often as possible: after a letter
    # or digit, a space always starts a new piece.
    text, chunks = case
    meter = Meter(encoding)
    meter._cut_every, meter._scan_every = cut_every, 10 ** 9
    decoded = ""
    for chunk in chunks:
        decoded += meter.feed(chunk)
        assert meter.tokens == full(decoded, encoding), (decoded, chunk)
    assert decoded == text


def test_a_streamed_answer_is_cut_at_word_ends_and_keeps_a_short_tail():
    meter = Meter()
    for i in range(5000):
        meter.feed(" word" if i % 7 else ", and")
        assert len(meter._tail) <= metering.CUT_EVERY_CHARS + 5
    assert meter.tokens == full("".join(" word" if i % 7 else ", and" for i in range(5000)))


# --- bytes ---------------------------------------------------------------------


def test_emoji_split_inside_its_bytes_counts_once():
    text = "a👍b"
    raw = text.encode()
    for cut in range(2, 5):  # inside the four bytes of 👍
        meter = Meter()
        assert meter.feed(raw[:cut]) == "a"
        assert meter.tokens == full("a")
        assert meter.feed(raw[cut:]) == "👍b"
        assert meter.tokens == full(text)


def test_every_byte_split_of_multibyte_text():
    text = "Zoë 👨‍👩‍👧‍👦 日本語 🇫🇷 e\u0301 x's"
    raw = text.encode()
    for cut in range(len(raw) + 1):
        assert metered([raw[:cut], raw[cut:]]) == (full(text), text), cut
    for size in range(1, 17):
        assert metered(pieces(size, raw), check_every_step=True) == (full(text), text), size


def test_finish_turns_a_dangling_partial_character_into_replacement():
    raw = "ok 👍".encode()[:-2]
    meter = Meter()
    assert meter.feed(raw) == "ok "
    assert meter.finish() == "\ufffd"
    assert meter.tokens == full("ok \ufffd") == full(raw.decode("utf-8", "replace"))
    assert meter.finish() == ""


def test_invalid_bytes_become_replacement_characters():
    raw = b"a\xffb\xc3(c"
    assert metered([raw]) == (full(raw.decode("utf-8", "replace")), raw.decode("utf-8", "replace"))


def test_str_after_a_partial_character_ends_it():
    meter = Meter()
    assert meter.feed("👍".encode()[:2]) == ""
    assert meter.feed("x") == "\ufffdx"
    assert meter.tokens == full("\ufffdx")


# --- count_tokens and the encodings ---------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_special_tokens_are_counted_as_text(encoding):
    enc = get_encoding(encoding)
    as_text = enc.encode("<|endoftext|>", disallowed_special=())
    assert count_tokens("<|endoftext|>", encoding) == len(as_text) > 1
    with pytest.raises(ValueError):
        enc.encode("<|endoftext|>")  # what plain encode would do with user text


def test_count_tokens_basics():
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens("hello world", "cl100k_base") == 2


def test_encodings_are_cached_and_differ():
    assert get_encoding() is get_encoding(DEFAULT_ENCODING)
    assert get_encoding("o200k_base").name == "o200k_base"
    assert get_encoding("cl100k_base").name == "cl100k_base"


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="p50k_base"):
        get_encoding("p50k_base")


# --- the shipped files and their hash check -------------------------------------


@pytest.mark.parametrize("name", sorted(metering.ENCODING_FILES))
def test_shipped_files_match_their_hash(name):
    filename, sha256 = metering.ENCODING_FILES[name]
    metering.verify_file(metering.TIKTOKEN_DIR / filename, sha256)


def test_verify_file_rejects_a_wrong_file(tmp_path):
    path = tmp_path / "ranks"
    path.write_bytes(b"not the ranks")
    good = hashlib.sha256(b"not the ranks").hexdigest()
    metering.verify_file(path, good)
    with pytest.raises(RuntimeError, match=r"ranks is corrupt: sha256 [0-9a-f]{64}, expected 0{64}"):
        metering.verify_file(path, "0" * 64)


def test_verify_file_rejects_a_missing_file(tmp_path):
    with pytest.raises(RuntimeError, match="absent.*missing"):
        metering.verify_file(tmp_path / "absent", "0" * 64)


@pytest.fixture
def fresh_encodings():
    """Forget the loaded encodings for one test, and again after it."""
    get_encoding.cache_clear()
    yield
    get_encoding.cache_clear()


def test_get_encoding_checks_the_file_before_tiktoken(tmp_path, monkeypatch, fresh_encodings):
    filename, _ = metering.ENCODING_FILES["o200k_base"]
    monkeypatch.setattr(metering, "TIKTOKEN_DIR", tmp_path)
    with pytest.raises(RuntimeError, match=f"{filename} is missing"):
        get_encoding("o200k_base")
    (tmp_path / filename).write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match=f"{filename} is corrupt"):
        get_encoding("o200k_base")
    assert (tmp_path / filename).read_bytes() == b"tampered"  # not deleted, as tiktoken would


def test_get_encoding_loads_offline(monkeypatch, fresh_encodings):
    def no_network(blobpath):
        raise AssertionError(f"tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "cl100k_base", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "elsewhere")
    enc = get_encoding("cl100k_base")
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    # Pointed at the app's files only while loading.
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "elsewhere"
    assert isinstance(enc, tiktoken.Encoding)


# --- large work off the gevent hub -----------------------------------------------

def _encode_calls(monkeypatch):
    """Record (thread, characters) of every encode_ordinary call made for the calling greenlet."""
    import threading
    import gevent
    import tiktoken
    calls, original = [], tiktoken.Encoding.encode_ordinary
    main, me = threading.get_ident(), gevent.getcurrent()

    def recording(self, text):
        thread = threading.get_ident()
        if thread != main or gevent.getcurrent() is me:  # not a greenlet another test left behind
            calls.append((thread, len(text)))
        return original(self, text)

    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", recording)
    return calls


def test_large_tokenizer_work_runs_in_the_threadpool_and_small_work_does_not(monkeypatch):
    import threading
    from app import metering
    calls = _encode_calls(monkeypatch)
    main = threading.get_ident()

    def on_hub():
        return sum(n for thread, n in calls if thread == main)

    def off_hub():
        return sum(n for thread, n in calls if thread != main)

    big = " ".join(["word"] * metering.POOL_CHARS)
    assert count_tokens("a short prompt") == 3 and on_hub() == 14 and off_hub() == 0
    calls.clear()
    assert count_tokens(big) == metering.POOL_CHARS and on_hub() == 0 and off_hub() == len(big)
    # A Meter handed a big chunk settles it off the hub; only the short tail is counted in place.
    calls.clear()
    meter = Meter()
    meter.feed(big)
    assert meter.tokens == metering.POOL_CHARS
    assert on_hub() < 20 and off_hub() > len(big) - 20
    # A long tail (one piece that never settles) is counted off the hub too.
    calls.clear()
    meter = Meter()
    meter.feed("x" * (metering.POOL_CHARS + 1))
    assert meter.tokens == count_tokens("x" * (metering.POOL_CHARS + 1)) and on_hub() == 0
    # What providers send, small chunks, is scanned and counted in place.
    calls.clear()
    meter = Meter()
    for chunk in ["a ", "stream ", "of ", "small ", "chunks"] * 20:
        meter.feed(chunk)
    assert meter.tokens == 100 and off_hub() == 0 and on_hub() > 0


def test_other_greenlets_run_while_a_large_prompt_is_counted():
    import gevent
    ticks = [0]

    def spin():
        while True:
            ticks[0] += 1
            gevent.sleep(0)

    spinner = gevent.spawn(spin)
    gevent.sleep(0)
    text = "Timmy counts tokens. " * 200_000  # 4 MB: ~1 M tokens, hundreds of milliseconds of work
    expected = len(get_encoding().encode_ordinary(text))
    before = ticks[0]
    assert count_tokens(text) == expected
    # Done on the hub, the encode would block every greenlet: the spinner would not move at all.
    assert ticks[0] > before
    spinner.kill()
