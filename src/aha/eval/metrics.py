"""Estimators (pass@k, maj@k) and answer verifiers (built-in task, GSM8K, MATH) for ``aha eval``.

pass@k is the unbiased estimator of Chen et al. (2021): with ``n`` samples of which ``c`` are correct,
``pass@k = 1 - C(n-c, k) / C(n, k)``, the probability that at least one of ``k`` samples drawn without
replacement from the ``n`` is correct.

maj@k is a majority vote over the extracted answers of the *first* ``k`` samples: samples with no
extracted answer do not vote; the most frequent answer wins, and a tie goes to the answer that occurred
first (lowest sample index). The question counts as solved when that answer's first sample is correct.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aha.data.answers import extract_answer, parse_reasoning

ANSWER_FORMATS = ("task", "gsm8k", "math")
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples with `c` correct (exact integer arithmetic)."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample carrying the most frequent non-None answer (ties: earliest first
    occurrence); None when no sample has an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == best)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """Majority vote over the first `k` samples' answers; True when the winning answer is correct."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k: need 1 <= k <= {len(answers)} samples, got k={k}")
    i = majority_vote(answers[:k])
    return i is not None and bool(correct[i])


# ---- answers ---------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{…}`` (or ``\fbox{…}``) with balanced braces; None when absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def gsm8k_truth(answer: str) -> str:
    """The final answer of a GSM8K solution (``… #### 72``), or the string itself when it has none."""
    tail = answer.split("####")[-1].strip()
    return tail.replace(",", "").replace("$", "").strip()


def math_truth(solution: str) -> str:
    r"""The final answer of a MATH solution (its last ``\boxed{}``), or the string itself."""
    boxed = last_boxed(solution)
    return boxed if boxed is not None else solution.strip()


def _to_number(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def extract_number(text: str, prefilled: bool | None = None) -> str | None:
    """The last number of the completion's answer (``<answer>``, ``\\boxed{}``, ``####`` or free text after
    the thought), normalised: no thousands separators, no trailing ``.0``."""
    ans = parse_reasoning(text, prefilled).answer
    for candidate in (last_boxed(ans), ans.split("####")[-1] if "####" in ans else None, ans):
        if candidate:
            nums = NUMBER_RE.findall(candidate)
            if nums:
                value = _to_number(nums[-1])
                if value is None:
                    continue
                return str(int(value)) if value.is_integer() else repr(value)
    return None


def extract_math(text: str, prefilled: bool | None = None) -> str | None:
    r"""The completion's final answer for MATH-style grading: last ``\boxed{}`` of the answer part, else
    the answer part itself (``<answer>`` content or free text after the thought)."""
    ans = parse_reasoning(text, prefilled).answer
    boxed = last_boxed(ans) if ans else None
    out = boxed if boxed is not None else ans
    return out.strip() or None


def math_equal(pred: str, truth: str) -> bool:
    """math-verify equivalence of two LaTeX/plain answers, with exact string match as a fallback."""
    if pred.strip() == truth.strip():
        return True
    from math_verify import parse, verify

    try:
        gold, got = parse(f"${truth}$"), parse(f"${pred}$")
        return bool(gold and got and verify(gold, got))
    except Exception:  # math-verify raises on odd input: treat as not equal
        return False


@dataclass
class Verifier:
    """Extracts a completion's answer and judges it against a row's ground truth, for one format."""

    format: str
    task: object | None = None  # a built-in aha Task for format "task"
    prefilled: bool | None = None  # the chat template opens the thought (see parse_reasoning)

    def __post_init__(self) -> None:
        if self.format not in ANSWER_FORMATS:
            raise ValueError(f"answer format must be one of {ANSWER_FORMATS}, got {self.format!r}")
        if self.format == "task" and self.task is None:
            raise ValueError("answer format 'task' needs a built-in task")

    def truth(self, raw: str) -> str:
        """The ground truth as compared: GSM8K's ``####`` tail, MATH's last ``\\boxed{}``."""
        raw = str(raw)
        return {"task": raw.strip(), "gsm8k": gsm8k_truth(raw), "math": math_truth(raw)}[self.format]

    def extract(self, completion: str) -> str | None:
        if self.format == "gsm8k":
            return extract_number(completion, self.prefilled)
        if self.format == "math":
            return extract_math(completion, self.prefilled)
        return extract_answer(completion)

    def is_correct(self, completion: str, truth: str, row: dict[str, Any] | None = None) -> bool:
        if self.format == "task":  # the task's own verifier, with the row's other columns when given
            if row is not None:
                return self.task.check(completion, {**row, "answer": truth})  # type: ignore[union-attr]
            return bool(self.task.is_correct(completion, truth))  # type: ignore[union-attr]
        got = self.extract(completion)
        if got is None:
            return False
        if self.format == "gsm8k":
            a, b = _to_number(got), _to_number(truth)
            return a is not None and b is not None and a == b  # floats hold integers exactly up to 2**53
        return math_equal(got, truth)


def detect_format(answers: Sequence[str]) -> str:
    """``gsm8k`` when answers carry ``####`` or are all numbers, ``math`` otherwise (``\\boxed{}`` or
    free-form, judged by math-verify)."""
    if any("####" in a for a in answers):
        return "gsm8k"
    if any("\\boxed" in a for a in answers):
        return "math"
    if answers and all(_to_number(a.strip().replace("$", "")) is not None for a in answers):
        return "gsm8k"
    return "math"
