"""Timmy: one interface (evaluate; stream text deltas then usage) with a provider behind it."""
from dataclasses import dataclass

from flask import current_app


@dataclass(frozen=True)
class Evaluation:
    accepted: bool
    reason: str = ""
    estimated_output_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Usage:
    """Token usage as the provider reports it; the latest report wins, never a sum."""
    input_tokens: int            # prompt tokens billed at the full input rate (no cached ones)
    output_tokens: int           # completion tokens, hidden reasoning included
    cache_read_tokens: int = 0   # prompt tokens read from the provider's cache
    cache_write_tokens: int = 0  # prompt tokens written to the provider's cache
    reasoning_tokens: int = 0    # the part of output_tokens never shown as text


def init_app(app):
    """Build the configured Timmy once per app."""
    kind = app.config["AGENT"]
    if kind == "demo":
        from .demo import DemoAgent
        app.extensions["agent"] = DemoAgent(
            model=app.config["WORK_MODEL"], tokens_per_second=app.config["DEMO_TOKENS_PER_SECOND"])
    else:
        raise RuntimeError(f"Unknown AGENT {kind!r}; the Workshop knows: demo")


def get_agent():
    """Return the app's Timmy."""
    return current_app.extensions["agent"]
