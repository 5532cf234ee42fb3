"""Timmy on Anthropic's Messages API, streamed as raw server-sent events."""
from urllib.parse import urlsplit

import anthropic

from . import ProviderError, TextDelta, Thinking, Usage
from .remote import LOST, RemoteAgent, timeout
from .transport import Urllib3Transport

OFFICIAL_HOST = "api.anthropic.com"
# Anthropic's usage fields and ours. Every count is cumulative, so a later report replaces an earlier one.
COUNTS = {"input_tokens": "input_tokens", "output_tokens": "output_tokens",
          "cache_read_input_tokens": "cache_read_tokens",
          "cache_creation_input_tokens": "cache_write_tokens"}
THINKING_BLOCKS = ("thinking", "redacted_thinking")


class AnthropicAgent(RemoteAgent):
    sdk = anthropic
    # Claude's tokenizer is not public: the live ticker counts in o200k_base and says it is approximate.
    approximate_count = True

    def __init__(self, config):
        super().__init__(config)
        base_url = config["PROVIDER_BASE_URL"]
        official = urlsplit(base_url).hostname == OFFICIAL_HOST
        self.label = f"Timmy on {self.model} (Anthropic)"
        # The SDK parses the events; urllib3 reads them, for less CPU a chunk (transport.py).
        self.client = anthropic.Anthropic(
            base_url=base_url, api_key=self.api_key(config, official), max_retries=0,
            timeout=timeout(anthropic, self.stall_seconds),
            http_client=anthropic.DefaultHttpxClient(transport=Urllib3Transport()))

    def events(self, model, system, user, max_tokens):
        """Yield TextDelta, Thinking and Usage from one streamed message."""
        counts, spoke, stopped, counted = {}, False, False, False
        with self.client.messages.create(model=model, max_tokens=max_tokens, system=system, stream=True,
                                         messages=[{"role": "user", "content": user}]) as stream:
            for event in stream:
                # Dispatch on the wire's type: the SDK gives unknown events a known class.
                kind = getattr(event, "type", None)
                if kind == "message_start":
                    counts = _counts(event.message.usage, counts)
                elif kind == "message_delta":
                    counts = _counts(event.usage, counts)
                    # message_start's output count is a placeholder; only message_delta's is the answer's.
                    counted = counted or getattr(event.usage, "output_tokens", None) is not None
                elif kind == "content_block_start":
                    if not spoke and getattr(event.content_block, "type", None) in THINKING_BLOCKS:
                        yield Thinking()
                elif kind == "content_block_delta":
                    delta_kind = getattr(event.delta, "type", None)
                    if delta_kind == "text_delta" and event.delta.text:
                        spoke = True
                        yield TextDelta(event.delta.text)
                    elif delta_kind == "thinking_delta" and not spoke:
                        yield Thinking()
                elif kind == "message_stop":
                    stopped = True
                # ping, content_block_stop and event types added later carry nothing to show or bill.
        if not stopped:  # the body ended cleanly but the message did not
            raise ProviderError(LOST)
        if not counted:  # a compatible server that reports no usage leaves the count to the Workshop
            return
        yield Usage(input_tokens=counts.get("input_tokens", 0), output_tokens=counts.get("output_tokens", 0),
                    cache_read_tokens=counts.get("cache_read_tokens", 0),
                    cache_write_tokens=counts.get("cache_write_tokens", 0),
                    reasoning_tokens=counts.get("reasoning_tokens", 0))


def _counts(reported, previous):
    """Return previous counts overwritten by every count this usage report carries (latest wins)."""
    counts = dict(previous)
    for theirs, ours in COUNTS.items():
        value = getattr(reported, theirs, None)
        if value is not None:
            counts[ours] = value
    details = getattr(reported, "output_tokens_details", None)
    if getattr(details, "thinking_tokens", None) is not None:
        counts["reasoning_tokens"] = details.thinking_tokens
    return counts
