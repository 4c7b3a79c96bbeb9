"""The rewards of the Hugging Face LLM course, chapter 12 (GRPO on GSM8K with ``<reasoning>/<answer>``).

Each takes ``style`` ("reasoning", the course's tags, or "think", R1's) where tags matter and ``prefill`` (text
a chat template writes before the completion, e.g. ``"<think>\\n"``). Deliberate differences from the course
code, which has known traps:

* the regexes use DOTALL, so a multi-line reasoning block can match (the course's ``.*?`` stops at newlines,
  so its soft format reward almost never fires on real reasoning);
* ``xmlcount`` penalises only the text after ``</answer>``: the course penalises the whole completion
  (0.001 per character) when it ends with ``</answer>`` without a trailing newline, and adds 0.001 for it;
* ``int_answer`` reads the last ``<answer>…</answer>`` block (no block → 0.0; the course scores the whole
  text) and counts negative integers (the course's ``str.isdigit`` does not).
"""

from __future__ import annotations

import re

from aha.data.answers import extract_answer
from aha.rewards.builtin import UNITS, choice, lengths, make_check, texts
from aha.rewards.registry import reward

TAGS = {"reasoning": "reasoning", "think": "think"}
INT_RE = re.compile(r"[+-]?[0-9]+")


def _tag(name: str, style: str) -> str:
    return TAGS[choice(name, "style", style, sorted(TAGS))]


@reward(
    "length",
    "−|ideal_length − length| in characters or tokens: closer to the ideal length is better",
    make_check("length", {"unit": UNITS}),
)
def length_reward(
    completions, completion_ids=None, *, ideal_length: int = 50, unit: str = "characters", **kwargs
) -> list[float]:
    """r = −|ideal_length − L|, L = number of characters of the text, or of tokens (``completion_ids``)."""
    return [-float(abs(ideal_length - n)) for n in lengths("length", completions, completion_ids, unit)]


def count_xml(text: str, tag: str = "reasoning") -> float:
    """The course's ``count_xml`` with the trailing-text penalty fixed (see the module docstring).

    r = 0.125·[``<tag>\\n`` once] + 0.125·[``\\n</tag>\\n`` once] + 0.125·[``\\n<answer>\\n`` once]
    + 0.125·[``\\n</answer>`` once] − 0.001·len(t without one leading ``\\n``)·[``\\n<answer>\\n`` once]
    − 0.001·max(0, len(t) − 1)·[``\\n</answer>`` once], t = the text after the last ``\\n</answer>``.
    """
    count = 0.0
    trailing = text.split("\n</answer>")[-1] if "\n</answer>" in text else ""
    if text.count(f"<{tag}>\n") == 1:
        count += 0.125
    if text.count(f"\n</{tag}>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(trailing.removeprefix("\n")) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= max(0, len(trailing) - 1) * 0.001
    return count


@reward(
    "xmlcount",
    "0.125 per well-placed tag (4 tags), minus 0.001 per character after </answer>",
    make_check("xmlcount", {"style": sorted(TAGS)}),
)
def xmlcount_reward(completions, *, style: str = "reasoning", prefill: str = "", **kwargs) -> list[float]:
    """r = count_xml(prefill + text): 0.125 for each of ``<tag>\\n``, ``\\n</tag>\\n``, ``\\n<answer>\\n``,
    ``\\n</answer>`` appearing exactly once, minus 0.001 per character after ``</answer>`` (counted once per
    closing-tag rule, as in the course: "…</answer>\\nxyz" loses 2 × 0.003)."""
    tag = _tag("xmlcount", style)
    return [count_xml(t, tag) for t in texts(completions, prefill)]


@reward(
    "strict_format",
    "value if the completion is exactly <reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>\\n",
    make_check("strict_format", {"style": sorted(TAGS)}),
)
def strict_format_reward(
    completions, *, value: float = 0.5, style: str = "reasoning", prefill: str = "", **kwargs
) -> list[float]:
    """r = value if prefill + text matches ``^<tag>\\n.*?\\n</tag>\\n<answer>\\n.*?\\n</answer>\\n$`` (DOTALL) else 0.

    As in the course the newline layout is exact, and a final newline after ``</answer>`` is required; unlike it,
    the thought may not contain another ``<tag>``/``</tag>`` (a second or re-opened block is not strict).
    """
    tag = _tag("strict_format", style)
    body = rf"(?:(?!</?{tag}>).)*?"  # the thought holds no other <tag> or </tag>
    pattern = re.compile(rf"^<{tag}>\n{body}\n</{tag}>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
    return [value if pattern.match(t) else 0.0 for t in texts(completions, prefill)]


@reward(
    "soft_format",
    "value if the completion starts with <reasoning>…</reasoning> then <answer>…</answer>",
    make_check("soft_format", {"style": sorted(TAGS)}),
)
def soft_format_reward(
    completions, *, value: float = 0.5, style: str = "reasoning", prefill: str = "", **kwargs
) -> list[float]:
    """r = value if prefill + text matches ``^<tag>.*?</tag>\\s*<answer>.*?</answer>`` (DOTALL) else 0.

    Any whitespace layout is accepted and text after ``</answer>`` is allowed (xmlcount penalises it).
    """
    tag = _tag("soft_format", style)
    pattern = re.compile(rf"<{tag}>.*?</{tag}>\s*<answer>.*?</answer>", re.DOTALL)
    return [value if pattern.match(t) else 0.0 for t in texts(completions, prefill)]


@reward("int_answer", "value if the last <answer>…</answer> holds an integer (e.g. 42, -3), else 0.0")
def int_answer_reward(completions, *, value: float = 0.5, **kwargs) -> list[float]:
    """r = value if strip(last <answer>…</answer>) fully matches ``[+-]?[0-9]+`` else 0.0 (no block → 0.0)."""
    out = []
    for t in texts(completions):
        got = extract_answer(t)
        out.append(value if got is not None and INT_RE.fullmatch(got) else 0.0)
    return out
