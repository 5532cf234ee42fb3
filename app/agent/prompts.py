"""What Timmy is told, and how his evaluation verdict is read back."""
import json
import re

from . import Evaluation

SYSTEM_PROMPT = (
    "You are Timmy, the Workshop's agent. Do the visitor's job carefully and concisely. "
    "Answer in plain text with light Markdown."
)

CHAT_PROMPT = (
    "You are Timmy, the Workshop's agent, chatting with a visitor for free. Reply in two or three "
    "friendly sentences of plain text. For real work, suggest they ask for a paid job."
)

EVAL_PROMPT = (
    "You are Timmy, the Workshop's agent. A visitor asks for a job; you do not do it now, you "
    "only decide whether to take it and how long your answer will be. Decline requests to harm "
    "people or systems, and requests you cannot do in a single written answer.\n"
    "Reply with one JSON object and nothing else, exactly these keys:\n"
    '{{"accepted": true or false, "reason": "one short sentence for the visitor", '
    '"estimated_output_tokens": the length of your answer in tokens, an integer from 1 to {cap}}}'
)

FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


class MalformedEvaluation(ValueError):
    """The model's verdict was not the JSON object it was asked for."""


def eval_prompt(cap):
    """Return the evaluation instructions for answers of at most cap tokens."""
    return EVAL_PROMPT.format(cap=cap)


def parse_evaluation(text, cap):
    """Read a verdict from the model's reply, tolerating code fences and chatter around it."""
    body = FENCE.sub("", text.strip())
    start, end = body.find("{"), body.rfind("}")
    try:
        verdict = json.loads(body[start:end + 1]) if 0 <= start < end else None
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict):
        raise MalformedEvaluation(text)
    accepted, reason = verdict.get("accepted"), verdict.get("reason")
    estimate = verdict.get("estimated_output_tokens")
    # bool is an int subclass: true/false is not a length.
    if (not isinstance(accepted, bool) or not isinstance(reason, str)
            or not isinstance(estimate, int) or isinstance(estimate, bool)):
        raise MalformedEvaluation(text)
    if not accepted:
        return Evaluation(False, reason.strip(), 0)
    # The quote is built on this number, so keep it inside what a job may produce.
    return Evaluation(True, reason.strip(), min(max(estimate, 1), cap))
