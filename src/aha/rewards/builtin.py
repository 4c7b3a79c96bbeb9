"""Built-in rewards: the ones the demo trains with (format and correctness)."""

from __future__ import annotations

import re

from aha.rewards.registry import reward
from aha.tasks.base import completion_text, extract_answer

STYLES = {
    "think": re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL),
    "reasoning": re.compile(r"^<reasoning>.*?</reasoning>\s*<answer>.*?</answer>\s*$", re.DOTALL),
}


def _style(name: str, style: str) -> re.Pattern:
    if style not in STYLES:
        raise ValueError(f"reward {name!r}: style must be one of {sorted(STYLES)}, got {style!r}")
    return STYLES[style]


@reward(
    "format", "1.0 if the completion is exactly <think>…</think><answer>…</answer> (or <reasoning> style), else 0.0"
)
def format_reward(completions, *, style: str = "think", **kwargs) -> list[float]:
    pattern = _style("format", style)
    return [1.0 if pattern.match(completion_text(c)) else 0.0 for c in completions]


@reward("correctness", "value if the <answer>…</answer> content equals the `answer` column exactly, else 0.0")
def correctness_reward(completions, answer, *, value: float = 1.0, **kwargs) -> list[float]:
    out = []
    for c, a in zip(completions, answer):
        got = extract_answer(completion_text(c))
        out.append(value if got is not None and got == str(a).strip() else 0.0)
    return out
