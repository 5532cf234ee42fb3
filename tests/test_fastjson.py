"""The per-token JSON: orjson's speed, and everything the standard library took still taken."""
import json
import math

import pytest

from app import fastjson


def test_a_frame_round_trips_as_utf8_json_any_reader_can_parse():
    frame = {"type": "job_progress", "data": "<span>~1,247 tokens · ~4 sats</span>", "start": 3,
             "text": "Timmy\n says \"hi\" ✨"}
    text = fastjson.dumps(frame)
    assert isinstance(text, bytes)
    assert fastjson.loads(text) == frame == json.loads(text)


def test_what_orjson_refuses_the_standard_library_still_reads_and_writes():
    lone = {"text": "half an emoji \ud83d"}  # a provider may split a surrogate pair
    assert fastjson.loads(fastjson.dumps(lone)) == lone
    assert fastjson.loads(b'{"text": "\\ud83d"}') == {"text": "\ud83d"}
    assert math.isnan(fastjson.loads(b"NaN"))


@pytest.mark.parametrize("data", [b"{", b"", b"data: {}", b'{"a": 1} trailing'])
def test_text_that_is_not_json_is_a_value_error(data):
    with pytest.raises(ValueError):
        fastjson.loads(data)
