"""Benchmark the streaming Meter against one full encode: python tests/bench/bench_metering.py"""
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.metering import DEFAULT_ENCODING, Meter, get_encoding  # noqa: E402

TARGET_TOKENS = 100_000

WORDS = (
    "the a of to and in is it that for on with as was he she they we you I'm don't it's "
    "Timmy workshop sats invoice Lightning answer question model token price cost job "
    "streaming incremental exact count encoding piece boundary merge"
).split()
EXTRAS = [
    "\n\n", "\n", ", ", ". ", "; ", "? ", "! ", " -- ", "  ", "\t", " (", ") ", " 2024", " 1234567",
    "\n```python\ndef f(x):\n    return x + 1\n```\n", "\n- item\n- item\n", " **bold** ",
    " 日本語のテキスト ", " 中文，标点！", " 👨‍👩‍👧‍👦 ", " 🇫🇷 ", " e\u0301 ", " x's ", " I'LL ",
    " <|endoftext|> ", "    \n", " https://example.com/a/b?q=1 ",
]


def build_text(encoding, target):
    """Build a deterministic mixed text of about target tokens."""
    enc = get_encoding(encoding)
    rng = random.Random(42)
    parts, total = [], 0
    while total < target:
        block = []
        for _ in range(200):
            block.append(rng.choice(EXTRAS) if rng.random() < 0.12 else " " + rng.choice(WORDS))
        text = "".join(block)
        parts.append(text)
        total += len(enc.encode_ordinary(text))
    return "".join(parts)


def main(encoding=DEFAULT_ENCODING):
    """Stream the text in 1-8 character chunks and print the figures."""
    enc = get_encoding(encoding)
    text = build_text(encoding, TARGET_TOKENS)
    rng = random.Random(7)
    chunks, i = [], 0
    while i < len(text):
        n = rng.randint(1, 8)
        chunks.append(text[i:i + n])
        i += n

    start = time.perf_counter()
    expected = len(enc.encode_ordinary(text))
    full_s = time.perf_counter() - start

    meter = Meter(encoding)
    start = time.perf_counter()
    for chunk in chunks:
        meter.feed(chunk)
    meter.finish()
    tokens = meter.tokens
    feed_s = time.perf_counter() - start

    # As a live ticker would at worst: read the count after every chunk.
    meter = Meter(encoding)
    start = time.perf_counter()
    for chunk in chunks:
        meter.feed(chunk)
        meter.tokens
    meter.finish()
    read_s = time.perf_counter() - start

    print(f"encoding            {encoding}")
    print(f"text                {len(text):,} characters in {len(chunks):,} chunks of 1-8")
    print(f"tokens              {tokens:,}")
    exact = "yes" if tokens == expected == meter.tokens else "no"
    print(f"exact               {exact} (full encode: {expected:,})")
    print(f"full encode         {full_s * 1e3:.1f} ms")
    print(f"incremental total   {feed_s * 1e3:.1f} ms "
          f"({read_s * 1e3:.1f} ms reading tokens after every chunk)")
    print(f"ratio               {feed_s / full_s:.1f}x ({read_s / full_s:.1f}x)")
    print(f"per chunk           {feed_s / len(chunks) * 1e6:.2f} us ({read_s / len(chunks) * 1e6:.2f} us)")


if __name__ == "__main__":
    for name in sys.argv[1:] or [DEFAULT_ENCODING]:
        main(name)
