"""The rewards of Hugging Face's Open R1 (``src/open_r1/rewards.py``), re-implemented with their traps fixed.

Math rewards verify with math-verify: the gold (``solution`` column, or ``answer`` when there is no
``solution``) is parsed as LaTeX or a plain expression; the completion's answer is the content of its last
``<answer>…</answer>`` block when it has one (plain ``0.5`` or ``$\\frac12$`` both work), else the first
``\\boxed{…}``/anchored answer ("the answer is …") in the whole text; then ``verify(gold, answer)`` (in that
order: math-verify is not symmetric). Differences from Open R1, which users trip on:

* an unparseable gold gives None ("does not apply"), not 1.0 (Open R1 rewards every completion for it);
* ``tag_count`` counts bare tags, so a second ``<think>`` block (with or without newlines) loses the points;
* ``reasoning_steps`` matches numbered lists and bullets on every line (Open R1's ``^\\d+\\.`` only at the start
  of the text) and needs a space after ``1.`` (so "3.14" is not a step);
* ``cosine`` clips the length at max_len (past it Open R1's cosine rises again);
* ``kimi_length`` takes min/max length over the completions of the same prompt (Kimi 1.5's group), not the batch.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

from aha.data.answers import extract_answer
from aha.rewards.builtin import UNITS, lengths, make_check, texts
from aha.rewards.registry import reward


def _timeout(seconds: int) -> int | None:
    """math-verify's timeouts use SIGALRM, which only works in the main thread: elsewhere, none."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)  # silence its "timeout is disabled" warning
        return None
    return seconds


@functools.lru_cache(maxsize=1)
def _configs() -> tuple[list, list]:
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    anywhere = [LatexExtractionConfig(), ExprExtractionConfig()]
    boxed_first = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        ),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ]
    return anywhere, boxed_first


def parse_gold(gold: Any, timeout_seconds: int = 5) -> list:
    """math-verify's parse of a gold solution (LaTeX or plain expression); [] when unparseable."""
    from math_verify import parse

    if gold is None or str(gold).strip() == "":
        return []
    anywhere, _ = _configs()
    return parse(str(gold), extraction_config=anywhere, parsing_timeout=_timeout(timeout_seconds))


def parse_answer(text: str, timeout_seconds: int = 5) -> list:
    """The completion's answer: its last <answer> block parsed freely, else the first boxed/anchored answer."""
    from math_verify import parse

    anywhere, boxed_first = _configs()
    block = extract_answer(text)
    if block is not None:  # an empty <answer></answer> is no answer, even with a \boxed{} in the reasoning
        return parse(block, extraction_config=anywhere, parsing_timeout=_timeout(timeout_seconds))
    return parse(
        text, extraction_config=boxed_first, extraction_mode="first_match", parsing_timeout=_timeout(timeout_seconds)
    )


def is_correct(text: str, gold: Any, timeout_seconds: int = 5) -> bool | None:
    """verify(gold, answer); None when the gold does not parse."""
    from math_verify import verify

    gold_parsed = parse_gold(gold, timeout_seconds)
    if not gold_parsed:
        return None
    answer_parsed = parse_answer(text, timeout_seconds)
    if not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=_timeout(timeout_seconds)))


def _golds(name: str, gold_column: str, n: int, kwargs: dict[str, Any]) -> Sequence[Any]:
    for column in (gold_column, "answer"):
        if column in kwargs and kwargs[column] is not None:
            if len(kwargs[column]) != n:
                raise ValueError(
                    f"reward {name!r}: column {column!r} has {len(kwargs[column])} rows for {n} completions"
                )
            return kwargs[column]
    raise ValueError(
        f"reward {name!r} needs the gold answers in a {gold_column!r} (or 'answer') dataset column; "
        f"got columns {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}"
    )


def _correctness(name: str, completions, gold_column: str, timeout_seconds: int, kwargs) -> list[bool | None]:
    golds = _golds(name, gold_column, len(completions), kwargs)
    return [is_correct(t, g, timeout_seconds) for t, g in zip(texts(completions), golds)]


@reward("accuracy", "1.0 if math-verify finds the answer equal to the gold `solution`, else 0.0; None if no gold")
def accuracy_reward(
    completions, *, gold_column: str = "solution", timeout_seconds: int = 5, **kwargs
) -> list[float | None]:
    """r = float(verify(parse(gold), parse(answer))); None when the gold does not parse.

    `timeout_seconds` bounds each parse and comparison (math-verify's ``parsing_timeout``/``timeout_seconds``;
    0 disables it; outside the main thread it is disabled, since math-verify's timer needs SIGALRM).
    """
    return [
        None if ok is None else float(ok)
        for ok in _correctness("accuracy", completions, gold_column, timeout_seconds, kwargs)
    ]


TAG_RE = {tag: re.compile(re.escape(tag)) for tag in ("<think>", "</think>", "<answer>", "</answer>")}


@reward("tag_count", "0.25 for each of <think>, </think>, <answer>, </answer> appearing exactly once")
def tag_count_reward(completions, *, prefill: str = "", **kwargs) -> list[float]:
    """r = 0.25 · #{tag ∈ (<think>, </think>, <answer>, </answer>) : count(tag in prefill + text) = 1}.

    Bare tags are counted (newlines are format's business), so two ``<think>`` blocks score at most 0.5.
    """
    return [0.25 * sum(len(p.findall(t)) == 1 for p in TAG_RE.values()) for t in texts(completions, prefill)]


STEP_RE = re.compile(r"Step \d+:|^[ \t]*\d+\.[ \t]|^[ \t]*[-*][ \t]|\b(?:First|Second|Next|Finally),", re.MULTILINE)


@reward(
    "reasoning_steps",
    "min(1, steps / min_steps): Step 1:, numbered lines, bullets, First/Second/Next/Finally,",
    make_check("reasoning_steps", positive=("min_steps",)),
)
def reasoning_steps_reward(completions, *, min_steps: int = 3, **kwargs) -> list[float]:
    """r = min(1, k / min_steps), k = number of matches of ``Step N:``, a line starting ``N. ``, a line starting
    ``- `` or ``* ``, or ``First,``/``Second,``/``Next,``/``Finally,``."""
    if min_steps <= 0:
        raise ValueError(f"reward 'reasoning_steps': parameter 'min_steps' must be positive, got {min_steps}")
    return [min(1.0, len(STEP_RE.findall(t)) / min_steps) for t in texts(completions)]


def _groups(prompts: Sequence[Any] | None, n: int) -> list[int]:
    """Group index of each completion: completions of equal prompts share one (the whole batch without prompts)."""
    if prompts is None or len(prompts) != n:
        return [0] * n
    ids: dict[str, int] = {}
    return [ids.setdefault(repr(p), len(ids)) for p in prompts]


@reward(
    "kimi_length",
    "Kimi 1.5: λ = 0.5 − (L − min L)/(max L − min L) per prompt; λ if correct, min(0, λ) if wrong",
    make_check("kimi_length", {"unit": UNITS}),
)
def kimi_length_reward(
    completions,
    prompts=None,
    completion_ids=None,
    *,
    unit: str = "tokens",
    gold_column: str = "solution",
    timeout_seconds: int = 5,
    **kwargs,
) -> list[float | None]:
    """r = λ if correct else min(0, λ), λ = 0.5 − (L − L_min)/(L_max − L_min) with L_min/L_max over the completions
    of the same prompt (all 0.0 when they have one length); None when the gold does not parse."""
    correct = _correctness("kimi_length", completions, gold_column, timeout_seconds, kwargs)
    lens = lengths("kimi_length", completions, completion_ids, unit)
    groups = _groups(prompts, len(completions))
    out: list[float | None] = []
    for i, ok in enumerate(correct):
        if ok is None:
            out.append(None)
            continue
        group = [lens[j] for j in range(len(lens)) if groups[j] == groups[i]]
        lo, hi = min(group), max(group)
        lam = 0.0 if hi == lo else 0.5 - (lens[i] - lo) / (hi - lo)
        out.append(float(lam if ok else min(0.0, lam)))
    return out


@reward(
    "cosine",
    "correctness scaled by length on a cosine: short correct best, short wrong worst",
    make_check("cosine", {"unit": UNITS}, positive=("max_len",)),
)
def cosine_reward(
    completions,
    completion_ids=None,
    *,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    unit: str = "tokens",
    gold_column: str = "solution",
    timeout_seconds: int = 5,
    **kwargs,
) -> list[float | None]:
    """r = a + ½(b − a)(1 + cos(π · min(L, max_len)/max_len)), with (a, b) = (min_value_correct, max_value_correct)
    if correct, (max_value_wrong, min_value_wrong) if wrong; None when the gold does not parse."""
    if max_len <= 0:
        raise ValueError(f"reward 'cosine': parameter 'max_len' must be positive, got {max_len}")
    correct = _correctness("cosine", completions, gold_column, timeout_seconds, kwargs)
    lens = lengths("cosine", completions, completion_ids, unit)
    out: list[float | None] = []
    for ok, n in zip(correct, lens):
        if ok is None:
            out.append(None)
            continue
        a, b = (min_value_correct, max_value_correct) if ok else (max_value_wrong, min_value_wrong)
        out.append(a + 0.5 * (b - a) * (1.0 + math.cos(math.pi * min(n, max_len) / max_len)))
    return out


@reward(
    "repetition_penalty",
    "max_penalty × fraction of repeated word n-grams (0 for texts shorter than n words)",
    make_check("repetition_penalty", positive=("ngram_size",), non_positive=("max_penalty",)),
)
def repetition_penalty_reward(completions, *, ngram_size: int = 3, max_penalty: float = -1.0, **kwargs) -> list[float]:
    """r = max_penalty · (1 − unique n-grams / total n-grams) over lower-cased whitespace words; 0.0 when the text
    has fewer than ngram_size words. max_penalty must be ≤ 0."""
    if max_penalty > 0:
        raise ValueError(f"reward 'repetition_penalty': parameter 'max_penalty' must be <= 0, got {max_penalty}")
    if ngram_size <= 0:
        raise ValueError(f"reward 'repetition_penalty': parameter 'ngram_size' must be positive, got {ngram_size}")
    out = []
    for t in texts(completions):
        words = t.lower().split()
        if len(words) < ngram_size:
            out.append(0.0)
            continue
        grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append(max_penalty * (1.0 - len(set(grams)) / len(grams)) + 0.0)
    return out


def _check_overlong(params: dict[str, Any]) -> None:
    m, c = params["max_completion_len"], params["soft_punish_cache"]
    if not 0 < c <= m:
        raise ValueError(
            "reward 'soft_overlong': parameter 'soft_punish_cache' must be in (0, max_completion_len], "
            f"got {c} with max_completion_len={m}"
        )


@reward(
    "soft_overlong",
    "DAPO: 0 up to max − cache tokens, then linearly down to −1 at max_completion_len, −1 past it",
    _check_overlong,
)
def soft_overlong_reward(
    completions, completion_ids=None, *, max_completion_len: int = 16384, soft_punish_cache: int = 4096, **kwargs
) -> list[float]:
    """r = 0 if L ≤ M − C; (M − C − L)/C if M − C < L ≤ M; −1 if L > M (L tokens, M = max_completion_len,
    C = soft_punish_cache). Set M to the trainer's max_completion_length."""
    _check_overlong({"max_completion_len": max_completion_len, "soft_punish_cache": soft_punish_cache})
    out = []
    for n in lengths("soft_overlong", completions, completion_ids, "tokens"):
        if n <= max_completion_len - soft_punish_cache:
            out.append(0.0)
        elif n <= max_completion_len:
            out.append((max_completion_len - soft_punish_cache - n) / soft_punish_cache)
        else:
            out.append(-1.0)
    return out
