"""The demo Timmy: no network, no key. Plausible answers at a realistic pace, usage reported like a provider."""
import random
import re
import zlib

import gevent

from ..metering import count_tokens, get_encoding
from . import Evaluation, TextDelta, Usage
from .prompts import SYSTEM_PROMPT

ABUSIVE = re.compile(r"\b(kill|murder|bomb|malware|ransomware|phish\w*|dox\w*|hate\s+speech)\b", re.I)

OPENINGS = [
    "Here's how I'd approach “{topic}”.",
    "Good job request. Let's work through “{topic}” step by step.",
    "Right, “{topic}”. Here's a careful answer.",
]
HEADINGS = ["## The short version", "## Step by step", "## Things to watch for", "## A worked example",
            "## Why this works", "## Next steps"]
SENTENCES = [
    "Start with the smallest version that could possibly work, then grow it one piece at a time.",
    "Write down what “done” looks like before you begin; it keeps the work honest.",
    "Measure before you optimise — the slow part is rarely where you expect it to be.",
    "Keep each piece small enough that you can explain it in a sentence.",
    "When two options look equally good, pick the one that is easier to undo.",
    "Name things for what they mean, not for how they are built.",
    "A checklist beats memory, especially at the end of a long day.",
    "If something fails, make it fail loudly and early, with a message a person can act on.",
    "Plan for the unhappy path: timeouts, retries, and the moment the network goes away.",
    "Test the behaviour a person relies on, not the implementation details.",
    "It's worth a quick sketch on paper — boxes and arrows catch most design mistakes.",
    "Costs add up per unit: count them per request, per user and per day.",
    "Don't trust input you didn't create; check its size, its shape and its encoding.",
    "Leave a short note for the next person — future you counts as the next person.",
]
BULLETS = ["- Keep it simple.", "- Check the numbers twice.", "- Ship something small today.",
           "- Ask for feedback early.", "- Automate the boring parts.", "- Write the test first."]
CODE = "```python\ndef total_msat(items):\n    return sum(i.amount_msat for i in items)\n```"
CLOSING = "Hope that helps! 🛠️ Ask me a follow-up any time."


class DemoAgent:
    label = "Demo Timmy — offline canned answers, no real model"
    encoding = "o200k_base"
    approximate_count = False  # the demo bills exactly what the meter counts

    def __init__(self, model="timmy-demo", tokens_per_second=30):
        self.model = model
        self.tokens_per_second = float(tokens_per_second)

    def prompt(self, request):
        """Return the full prompt Timmy is given for a request (its tokens are the job's input)."""
        return f"{SYSTEM_PROMPT}\n\n{request}"

    def evaluate(self, request):
        """Accept ordinary requests and estimate the answer's size; reject empty or abusive ones."""
        if not request.strip():
            return Evaluation(False, "There is no request to work on.")
        if ABUSIVE.search(request):
            return Evaluation(False, "Timmy won't help with harming people or systems.")
        words = len(request.split())
        estimate = 220 + 14 * min(words, 60)
        if re.search(r"\b(brief|short|quick|one line|tl;?dr)\b", request, re.I):
            estimate //= 2
        return Evaluation(True, "Looks like a job Timmy can do.", estimate)

    def stream(self, request, max_tokens=None):
        """Yield the answer as small text deltas at the configured pace, then the usage."""
        rng = random.Random(zlib.crc32(request.encode("utf-8", "replace")))
        estimate = self.evaluate(request).estimated_output_tokens or 200
        target_tokens = int(estimate * rng.uniform(0.7, 1.0))
        if max_tokens is not None:
            target_tokens = min(target_tokens, max_tokens)
        text = self._compose(request, target_tokens, rng)
        for piece in re.findall(r"\S*\s*", text):
            if not piece:
                continue
            if self.tokens_per_second > 0:
                gevent.sleep(max(1, len(piece) // 4) / self.tokens_per_second)
            yield TextDelta(piece)
        yield Usage(input_tokens=count_tokens(self.prompt(request)), output_tokens=count_tokens(text))

    def chat(self, message):
        """Yield a short free-chat reply (about 150 tokens at most), then the usage."""
        topic = _topic(message)
        reply = (f"Hi! You said “{topic}”. I'm the demo Timmy, so my chat is canned — "
                 "but paid jobs show my live cost ticker. Ask me for a job above and watch it tick.")
        yield TextDelta(reply)
        yield Usage(input_tokens=count_tokens(self.prompt(message)), output_tokens=count_tokens(reply))

    def _compose(self, request, target_tokens, rng):
        """Write an answer of about target_tokens tokens (never much more: it is what was quoted)."""
        topic = _topic(request)
        parts = [rng.choice(OPENINGS).format(topic=topic), ""]
        wants_code = re.search(r"\b(code|python|function|script|sql|api)\b", request, re.I)
        while count_tokens("\n".join(parts)) < target_tokens:
            parts += [rng.choice(HEADINGS), " ".join(rng.sample(SENTENCES, 3)), ""]
            if rng.random() < 0.4:
                parts += rng.sample(BULLETS, 3) + [""]
            if wants_code and rng.random() < 0.3:
                parts += [CODE, ""]
        body = "\n".join(parts)
        budget = max(0, target_tokens - count_tokens(CLOSING) - 2)
        body = get_encoding().decode(get_encoding().encode_ordinary(body)[:budget])
        cut = max(body.rfind("\n"), body.rfind(". ") + 1)  # end on a whole sentence or line
        return (body[:cut] if cut > 0 else body).rstrip() + "\n\n" + CLOSING


def _topic(text):
    line = " ".join(text.split())
    return line if len(line) <= 80 else line[:77] + "…"
