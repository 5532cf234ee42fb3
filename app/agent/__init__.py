"""Timmy: one interface (evaluate; stream text deltas then usage) with a provider behind it."""
from dataclasses import dataclass

from flask import current_app

AGENTS = ("demo", "anthropic", "openai")


@dataclass(frozen=True)
class Evaluation:
    accepted: bool
    reason: str = ""
    estimated_output_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Thinking:
    """The model is reasoning where no one sees it; sent (repeatedly) only before any text."""


@dataclass(frozen=True)
class Usage:
    """Token usage as the provider reports it; the latest report wins, never a sum."""
    input_tokens: int            # prompt tokens billed at the full input rate (no cached ones)
    output_tokens: int           # completion tokens, hidden reasoning included
    cache_read_tokens: int = 0   # prompt tokens read from the provider's cache
    cache_write_tokens: int = 0  # prompt tokens written to the provider's cache
    reasoning_tokens: int = 0    # the part of output_tokens never shown as text


class ProviderError(Exception):
    """Timmy's model provider failed; the message is fit to show a visitor."""


def init_app(app):
    """Build the configured Timmy once per app."""
    # Refuse to start rather than take evaluation fees for jobs that can never be quoted.
    if app.config["WORK_MODEL"] not in app.config["MODEL_PRICES"]:
        raise RuntimeError(f"WORK_MODEL {app.config['WORK_MODEL']!r} has no price: add it to "
                           'MODEL_PRICES, e.g. {"' + app.config["WORK_MODEL"] + '": {"input": "1.00", '
                           '"output": "3.00"}} (USD per million tokens)')
    app.extensions["agent"] = build(app.config)


def build(config):
    """Return the agent the configuration names."""
    kind = config["AGENT"]
    if kind == "demo":
        from .demo import DemoAgent
        return DemoAgent(model=config["WORK_MODEL"], tokens_per_second=config["DEMO_TOKENS_PER_SECOND"])
    if kind == "anthropic":
        from .anthropic import AnthropicAgent
        return AnthropicAgent(config)
    if kind == "openai":
        from .openai_compat import OpenAIAgent
        return OpenAIAgent(config)
    raise RuntimeError(f"Unknown AGENT {kind!r}; the Workshop knows: {', '.join(AGENTS)}")


def get_agent():
    """Return the app's Timmy."""
    return current_app.extensions["agent"]
