"""Timmy on any OpenAI-compatible chat-completions API: OpenAI, OpenRouter, Ollama, vLLM, llama.cpp."""
from urllib.parse import urlsplit

import httpx2
import openai

from .. import fastjson
from . import ProviderError, TextDelta, Thinking, Usage
from .remote import LOST, UNREADABLE, RemoteAgent, timeout
from .sse import data_events
from .transport import Urllib3Transport

OFFICIAL_HOST = "api.openai.com"
# Where compatible servers put hidden reasoning: OpenRouter, Ollama and newer vLLM use
# "reasoning"; DeepSeek and older vLLM use "reasoning_content".
REASONING_FIELDS = ("reasoning", "reasoning_content")


class OpenAIAgent(RemoteAgent):
    sdk = openai

    def __init__(self, config):
        super().__init__(config)
        base_url = config["PROVIDER_BASE_URL"]
        host = urlsplit(base_url).hostname
        self.official = host == OFFICIAL_HOST
        # OpenAI's models count in o200k_base; a model on another server has its own tokenizer.
        self.approximate_count = not self.official
        self.label = f"Timmy on {self.model} ({'OpenAI' if self.official else host})"
        # Over urllib3: httpx2's own transport cost more CPU a chunk than all the rest (transport.py).
        self.client = openai.OpenAI(base_url=base_url, api_key=self.api_key(config, self.official),
                                    max_retries=0, timeout=timeout(openai, self.stall_seconds),
                                    http_client=openai.DefaultHttpxClient(transport=Urllib3Transport()))

    def events(self, model, system, user, max_tokens):
        """Yield TextDelta, Thinking and Usage from one streamed chat completion."""
        # OpenAI's reasoning models refuse max_tokens; compatible servers mostly know only it.
        limit = {"max_completion_tokens" if self.official else "max_tokens": max_tokens}
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        usage, finished, spoke = None, False, False
        # The SDK's raw streaming response, read with this module's SSE parser: the SDK's typed
        # chunks, and its own decoder, cost more CPU than everything else a streamed token does.
        # A status error still raises the SDK's APIStatusError before any byte is read; error
        # events and failures mid-stream raise what the SDK's own stream raises.
        with self.client.chat.completions.with_streaming_response.create(
                model=model, messages=messages, stream=True,
                stream_options={"include_usage": True}, **limit) as response:
            try:
                for data in data_events(response.iter_bytes()):
                    if data.startswith(b"[DONE]"):
                        break
                    chunk = fastjson.loads(data)  # unreadable JSON is a ValueError: explain() says UNREADABLE
                    if not isinstance(chunk, dict):
                        raise ProviderError(UNREADABLE)
                    if chunk.get("error"):
                        raise _stream_error(chunk["error"], response.http_request)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():  # the final usage chunk has no choices
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            spoke = True
                            yield TextDelta(delta["content"])
                        elif not spoke and _reasoning(delta):
                            yield Thinking()
                        finished = finished or choice.get("finish_reason") is not None
            except httpx2.TimeoutException as exc:
                raise openai.APITimeoutError(request=response.http_request) from exc
            except httpx2.RequestError as exc:
                raise openai.APIConnectionError(request=response.http_request) from exc
        if not finished:  # the body ended cleanly but the answer did not
            raise ProviderError(LOST)
        if usage is not None:  # servers that ignore include_usage leave the count to the Workshop
            yield _usage(usage)


def _stream_error(error, request):
    """Return the APIError the SDK's stream raises for an error event."""
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message=message, request=request, body=error)


def _reasoning(delta):
    return any(isinstance(delta.get(name), str) and delta[name] for name in REASONING_FIELDS)


def _usage(reported):
    """Return Usage from chat-completions usage: cached prompt tokens are not billed twice."""
    prompt = reported.get("prompt_tokens_details") or {}
    completion = reported.get("completion_tokens_details") or {}
    cached = prompt.get("cached_tokens") or 0
    reasoning = completion.get("reasoning_tokens") or 0
    return Usage(input_tokens=max(0, (reported.get("prompt_tokens") or 0) - cached),
                 output_tokens=reported.get("completion_tokens") or 0,  # reasoning is already inside
                 cache_read_tokens=cached, reasoning_tokens=reasoning)
