"""The exact frames Anthropic's Messages API and OpenAI's chat completions stream, and their errors."""
import json

from providers import Send

CREATED = 1767225600


def sse(event, payload):
    """Return one Anthropic frame: a named event and its JSON data, ended by a blank line."""
    return Send(f"event: {event}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())


def data(payload):
    """Return one OpenAI frame: an unnamed data line, ended by a blank line."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return Send(f"data: {text}\n\n".encode())


def anthropic_frames(pieces, *, input_tokens=25, cache_read=0, cache_write=0, output_counts=(15,),
                     thinking=(), model="claude-sonnet-4-6"):
    """Return a whole Messages stream: message_start, blocks, message_delta per count, message_stop.

    output_counts are the cumulative output_tokens of successive message_delta events.
    """
    usage = {"input_tokens": input_tokens, "cache_creation_input_tokens": cache_write,
             "cache_read_input_tokens": cache_read,
             "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
             "output_tokens": 1, "service_tier": "standard"}
    frames = [sse("message_start", {"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}})]
    index = 0
    if thinking:
        frames.append(sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "thinking", "thinking": "",
                                                                    "signature": ""}}))
        frames += [sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "thinking_delta", "thinking": t}})
                   for t in thinking]
        frames.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pk"}}))
        frames.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    frames.append(sse("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {"type": "text", "text": ""}}))
    frames.append(sse("ping", {"type": "ping"}))
    frames += [sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                           "delta": {"type": "text_delta", "text": piece}})
               for piece in pieces]
    frames.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    frames += [sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                     "usage": {"output_tokens": count}})
               for count in output_counts]
    frames.append(sse("message_stop", {"type": "message_stop"}))
    return frames


def anthropic_error_event(kind="overloaded_error", message="Overloaded"):
    """Return the error frame Anthropic sends inside a stream that has already begun."""
    return sse("error", {"type": "error", "error": {"type": kind, "message": message}})


def anthropic_error_body(kind="overloaded_error", message="Overloaded"):
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def chunk(choices, usage=None, model="gpt-5.4-mini-2026-03-17"):
    """Return one chat.completion.chunk object (usage is null on every chunk but the last)."""
    return {"id": "chatcmpl-C9yVq1ZzMQ2nCkq3pLk7", "object": "chat.completion.chunk", "created": CREATED,
            "model": model, "service_tier": "default", "system_fingerprint": None,
            "choices": choices, "usage": usage, "obfuscation": "Xk2"}


def openai_frames(pieces, *, prompt_tokens=30, completion_tokens=12, cached_tokens=0,
                  reasoning_tokens=0, reasoning=(), reasoning_field="reasoning_content",
                  include_usage=True):
    """Return a whole chat-completions stream: role, reasoning, content, finish, usage, [DONE]."""
    def choice(delta, finish=None):
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    frames = [data(chunk(choice({"role": "assistant", "content": "", "refusal": None})))]
    frames += [data(chunk(choice({"content": None, reasoning_field: r}))) for r in reasoning]
    frames += [data(chunk(choice({"content": piece}))) for piece in pieces]
    frames.append(data(chunk(choice({}, "stop"))))
    if include_usage:
        frames.append(data(chunk([], {  # the usage chunk: empty choices, by design
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}})))
    frames.append(data("[DONE]"))
    return frames


def openai_error_body(message="The server had an error while processing your request.",
                      kind="server_error", code=None):
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
