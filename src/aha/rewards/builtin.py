"""Built-in rewards: the ones the demo trains with (format and correctness), and the helpers every reward uses.

Helpers: ``texts`` (standard or conversational completions → strings, with an optional prefill such as the
``<think>\\n`` a chat template puts before the completion), ``lengths`` (characters or tokens from the
``completion_ids`` the trainer passes) and ``choice`` (a str parameter restricted to a few values).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from aha.data.answers import extract_answer, final_answer
from aha.data.prompts import completion_text
from aha.rewards.registry import reward

STYLES = {
    "think": re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL),
    "reasoning": re.compile(r"^<reasoning>.*?</reasoning>\s*<answer>.*?</answer>\s*$", re.DOTALL),
}
UNITS = ("characters", "tokens")
# how correctness reads a completion's answer: any format people use (final_answer), or only <answer>…</answer>
ANSWER_READERS: dict[str, Callable[[str], str | None]] = {"auto": final_answer, "tag": extract_answer}


def choice(name: str, param: str, value: str, allowed: Sequence[str]) -> str:
    """`value` if it is one of `allowed`, else a ValueError naming the reward and the parameter."""
    if value not in allowed:
        raise ValueError(f"reward {name!r}: parameter {param!r} must be one of {list(allowed)}, got {value!r}")
    return value


def make_check(
    name: str,
    choices: dict[str, Sequence[str]] | None = None,
    positive: Sequence[str] = (),
    non_positive: Sequence[str] = (),
) -> Callable[[dict[str, Any]], None]:
    """A registry ``check``: str parameters in `choices`, numbers > 0 (`positive`) or <= 0 (`non_positive`)."""

    def check(params: dict[str, Any]) -> None:
        for param, allowed in (choices or {}).items():
            choice(name, param, params[param], allowed)
        for param in positive:
            if params[param] <= 0:
                raise ValueError(f"reward {name!r}: parameter {param!r} must be positive, got {params[param]!r}")
        for param in non_positive:
            if params[param] > 0:
                raise ValueError(f"reward {name!r}: parameter {param!r} must be <= 0, got {params[param]!r}")

    return check


def texts(completions: Sequence[Any], prefill: str = "") -> list[str]:
    """Each completion as text (standard or conversational), with `prefill` put in front of it.

    `prefill` is what the chat template already wrote at the start of the assistant turn (e.g. ``"<think>\\n"``
    for templates that force thinking): the model never generates it, so the reward must add it back.
    """
    return [prefill + completion_text(c) for c in completions]


def lengths(name: str, completions: Sequence[Any], completion_ids: Sequence[Any] | None, unit: str) -> list[int]:
    """Completion lengths in `unit`: characters of the text, or tokens (``len`` of each of `completion_ids`)."""
    choice(name, "unit", unit, UNITS)
    if unit == "characters":
        return [len(t) for t in texts(completions)]
    if completion_ids is None:
        raise ValueError(f"reward {name!r}: unit='tokens' needs the `completion_ids` the trainer passes")
    if len(completion_ids) != len(completions):
        raise ValueError(f"reward {name!r}: {len(completion_ids)} completion_ids for {len(completions)} completions")
    return [len(ids) for ids in completion_ids]


def _style(name: str, style: str) -> re.Pattern:
    return STYLES[choice(name, "style", style, sorted(STYLES))]


@reward(
    "format",
    "1.0 if the completion is exactly <think>…</think><answer>…</answer> (or <reasoning> style), else 0.0",
    make_check("format", {"style": sorted(STYLES)}),
)
def format_reward(completions, *, style: str = "think", prefill: str = "", **kwargs) -> list[float]:
    """r = 1.0 if prefill + text matches ``^<tag>.*?</tag>\\s*<answer>.*?</answer>\\s*$`` (DOTALL) else 0.0.

    With a template that prefills ``<think>\\n``, set ``prefill="<think>\\n"``: the completion starts inside the
    thought (``…</think><answer>…</answer>``) and is scored as the full text the model sees.
    """
    pattern = _style("format", style)
    return [1.0 if pattern.match(t) else 0.0 for t in texts(completions, prefill)]


@reward(
    "correctness",
    "value if the final answer (<answer>, \\boxed{}, #### or 'The answer is') equals the `answer` column, else 0.0",
    make_check("correctness", {"answer_format": sorted(ANSWER_READERS)}),
)
def correctness_reward(
    completions, answer, *, value: float = 1.0, answer_format: str = "auto", **kwargs
) -> list[float | None]:
    """r = value if the completion's final answer == strip(str(answer)) else 0.0; None where `answer` is None.

    `answer_format` says where the final answer is read: ``auto`` in whichever format it is written (a closed
    ``<answer>…</answer>`` wins, then ``\\boxed{}``, then a final ``#### N``, then "The answer is N", see
    :func:`aha.data.answers.final_answer`); ``tag`` only in the last ``<answer>…</answer>`` block. The tags are
    the format reward's business, so correctness does not need them. The answer is compared as written.

    On a reasoning-gym task's rows (an ``rg_entry`` column, see :mod:`aha.tasks.reasoning_gym`) the answer is judged
    by the generator's own ``score_answer`` instead: correct when it scores at least ``CORRECT_SCORE`` (1.0), so an
    answer any of several ways right (countdown's expressions, a sudoku's grid) counts.
    """
    read = ANSWER_READERS[choice("correctness", "answer_format", answer_format, sorted(ANSWER_READERS))]
    entries, configs = kwargs.get("rg_entry"), kwargs.get("rg_config")
    out: list[float | None] = []
    for i, (c, a) in enumerate(zip(completions, answer)):
        if entries is not None and configs is not None and entries[i] is not None:
            from aha.tasks.reasoning_gym import CORRECT_SCORE, score

            correct = score(read(completion_text(c)), entries[i], configs[i]) >= CORRECT_SCORE
            out.append(value if correct else 0.0)
            continue
        if a is None:
            out.append(None)
            continue
        got = read(completion_text(c))
        out.append(value if got is not None and got == str(a).strip() else 0.0)
    return out
