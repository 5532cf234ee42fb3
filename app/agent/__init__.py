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
    input_tokens: int
    output_tokens: int


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
