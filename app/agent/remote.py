"""What the real providers share: prompts in, usage out, every failure a ProviderError a visitor can read."""
import logging

import httpx2

from . import ProviderError, TextDelta
from .prompts import CHAT_PROMPT, SYSTEM_PROMPT, MalformedEvaluation, eval_prompt, parse_evaluation

log = logging.getLogger(__name__)

CHAT_MAX_TOKENS = 150
# The verdict is a few dozen tokens; the rest is room for models that reason before they answer.
EVAL_MAX_TOKENS = 1024

OVERLOADED = "Timmy's model provider is overloaded right now. Please try again in a few minutes."
RATE_LIMITED = "Timmy's model provider is handling too many requests right now. Please try again shortly."
MISCONFIGURED = ("Timmy can't reach his model: the Workshop's provider settings are wrong. "
                 "Please tell the operator.")
REFUSED = "Timmy's model provider refused the request."
PROVIDER_FAILED = "Timmy's model provider had an internal error. Please try again later."
STALLED = "Timmy's model provider stopped responding."
LOST = "The connection to Timmy's model provider was lost."
UNREADABLE = "Timmy's model provider sent a reply that could not be read."
REPORTED = "Timmy's model provider reported an error and stopped."
NO_VERDICT = "Timmy could not evaluate the request: his model's verdict was unreadable twice."


def timeout(sdk, stall_seconds):
    """Return the SDK timeout: a stall is a read that waits stall_seconds for a single byte."""
    return sdk.Timeout(connect=10, read=float(stall_seconds), write=30, pool=10)


def explain(exc, sdk):
    """Return the ProviderError a visitor sees for a failure at the provider boundary."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    # Anthropic nests the error under "error"; OpenAI's SDK hands over the inner object itself.
    error = body.get("error", body) if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    if status in (503, 529) or kind == "overloaded_error":
        return ProviderError(OVERLOADED)
    if status == 429 or kind == "rate_limit_error":
        return ProviderError(RATE_LIMITED)
    # Bad credentials or an unknown model are the operator's settings, not the visitor's fault.
    if status in (401, 403, 404) or kind in ("authentication_error", "permission_error", "not_found_error"):
        return ProviderError(MISCONFIGURED)
    if status is not None and 400 <= status < 500:
        return ProviderError(REFUSED)
    if (status is not None and status >= 500) or kind in ("api_error", "server_error"):
        return ProviderError(PROVIDER_FAILED)
    # Mid-stream, one SDK wraps transport errors and the other lets httpx2's own through.
    if isinstance(exc, (sdk.APITimeoutError, httpx2.TimeoutException)):
        return ProviderError(STALLED)
    if isinstance(exc, (sdk.APIConnectionError, httpx2.TransportError)):
        return ProviderError(LOST)
    if isinstance(exc, sdk.APIError):  # an error event inside the stream
        return ProviderError(REPORTED)
    return ProviderError(UNREADABLE)  # a chunk that is not the JSON it should be


class RemoteAgent:
    """A Timmy whose answers come from a provider's streaming API; subclasses supply events()."""
    encoding = "o200k_base"
    approximate_count = True
    sdk = None  # the provider's SDK module, for its exception classes

    def __init__(self, config):
        self.model = config["WORK_MODEL"]
        self.eval_model = config["EVAL_MODEL"]
        self.chat_model = config["CHAT_MODEL"]
        self.max_output_tokens = int(config["MAX_OUTPUT_TOKENS"])
        self.stall_seconds = float(config["PROVIDER_STALL_SECONDS"])

    def api_key(self, config, official):
        """Return the API key: the provider's own API needs one; local servers take any."""
        if config.get("PROVIDER_API_KEY"):
            return config["PROVIDER_API_KEY"]
        if official:
            raise RuntimeError(
                f"AGENT={config['AGENT']} needs PROVIDER_API_KEY for {config['PROVIDER_BASE_URL']}")
        return "unused"  # Ollama, vLLM and llama.cpp ignore it, but the SDKs insist on one

    def prompt(self, request):
        """Return the full prompt Timmy is given for a request (its tokens are the job's input)."""
        return f"{SYSTEM_PROMPT}\n\n{request}"

    def evaluate(self, request):
        """Ask the evaluation model for a verdict; an unreadable one is asked for once more."""
        for attempt in (1, 2):
            reply = "".join(item.text for item in self.guarded(
                self.eval_model, eval_prompt(self.max_output_tokens), request, EVAL_MAX_TOKENS)
                if isinstance(item, TextDelta))
            try:
                return parse_evaluation(reply, self.max_output_tokens)
            except MalformedEvaluation:
                log.warning("unreadable verdict from %s (attempt %d): %.200r",
                            self.eval_model, attempt, reply)
        raise ProviderError(NO_VERDICT)

    def stream(self, request, max_tokens=None):
        """Yield the job's answer as TextDelta (Thinking before any text), then its Usage."""
        cap = min(max_tokens or self.max_output_tokens, self.max_output_tokens)
        return self.guarded(self.model, SYSTEM_PROMPT, request, cap)

    def chat(self, message):
        """Yield a short free-chat reply, then its Usage."""
        return self.guarded(self.chat_model, CHAT_PROMPT, message, CHAT_MAX_TOKENS)

    def guarded(self, model, system, user, max_tokens):
        """Yield events(); any failure leaves as ProviderError. close() ends the request upstream."""
        try:
            yield from self.events(model, system, user, max_tokens)
        except ProviderError:
            raise
        except Exception as exc:
            log.warning("call to %s failed: %r", model, exc)
            raise explain(exc, self.sdk) from exc

    def events(self, model, system, user, max_tokens):
        raise NotImplementedError
