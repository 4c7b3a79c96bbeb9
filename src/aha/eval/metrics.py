"""Estimators (pass@k, maj@k) and the answer verifier (built-in task, GSM8K, MATH) of every evaluation.

pass@k is the unbiased estimator of Chen et al. (2021): with ``n`` samples of which ``c`` are correct,
``pass@k = 1 - C(n-c, k) / C(n, k)``, the probability that at least one of ``k`` samples drawn without
replacement from the ``n`` is correct.

maj@k is a majority vote over the extracted answers of the *first* ``k`` samples: samples with no
extracted answer do not vote; the most frequent answer wins, and a tie goes to the answer that occurred
first (lowest sample index). The question counts as solved when that answer's first sample is correct.

A :class:`Verifier` grades a completion against a row's reference answer: a built-in task's own check, GSM8K's
exact numeric match of the completion's last number, or MATH's math-verify equivalence; the answers are read by
:mod:`aha.data.answers`. :func:`verified_rows` loads the rows of a data spec with the verifier that grades them
(``aha eval``, ``aha sample`` and a recipe's ``eval:`` section all use it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aha.data.answers import ANSWER_FORMATS, completion_answer, normalize_number, reference_answer

if TYPE_CHECKING:
    from aha.tasks import Task

VERIFIER_FORMATS = ("task", *ANSWER_FORMATS)


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


# ---- verifying ---------------------------------------------------------------------------------------


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
    """Extracts a completion's answer and judges it against a row's reference answer, for one format."""

    format: str
    task: Task | None = None  # a built-in aha Task for format "task"
    prefilled: bool | None = None  # the chat template opens the thought (see parse_reasoning)

    def __post_init__(self) -> None:
        if self.format not in VERIFIER_FORMATS:
            raise ValueError(f"answer format must be one of {', '.join(VERIFIER_FORMATS)}, got {self.format!r}")
        if self.format == "task" and self.task is None:
            raise ValueError("answer format 'task' needs a built-in task")

    def extract(self, completion: str) -> str | None:
        """The completion's final answer as graded (a task's: :func:`aha.data.answers.final_answer`, the
        ``<answer>`` block, else ``\\boxed{}``, ``####`` or "The answer is")."""
        return completion_answer(completion, "auto" if self.format == "task" else self.format, self.prefilled)

    def is_correct(self, completion: str, truth: str, row: dict[str, Any] | None = None) -> bool:
        if self.format == "task":  # the task's own verifier, with the row's other columns when given
            assert self.task is not None
            if row is not None:
                return self.task.check(completion, {**row, "answer": truth})
            return bool(self.task.is_correct(completion, truth))
        got = self.extract(completion)
        if got is None:
            return False
        if self.format == "gsm8k":
            return got == normalize_number(str(truth))
        return math_equal(got, str(truth))


def _as_messages(prompt: Any) -> Any:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def verified_rows(
    spec: dict[str, Any], tokenizer: Any = None, answer_format: str | None = None
) -> tuple[list[dict[str, Any]], Verifier]:
    """The rows of the :func:`aha.data.load.load_rows` spec `spec` and the verifier that grades completions of them.

    A built-in task is graded by its own verifier, a file or Hub data set by its ``answer_format`` (``auto`` when
    not given: detected from its answers); `answer_format` overrides both (``task`` only for a task). Each row has
    a chat ``prompt`` (a plain-text question becomes one user message) and ``answer``, the reference answer as
    compared (a task's answer, or the one :func:`aha.data.answers.reference_answer` reads)."""
    from aha.data.load import AUTO, load_rows, resolve_spec, spec_name, task_of

    if answer_format not in (None, *VERIFIER_FORMATS):
        raise ValueError(f"answer format must be one of {', '.join(VERIFIER_FORMATS)}, got {answer_format!r}")
    if not isinstance(spec, dict) or "task" in spec:
        rows = load_rows(spec, tokenizer)  # a spec that is not a mapping fails here, with the loader's message
        verifier = Verifier("task", task_of(spec)) if answer_format in (None, "task") else Verifier(answer_format)
        if verifier.format != "task":  # the task's answers, read as `answer_format` references
            for row in rows:
                row["answer"] = reference_answer(str(row["answer"]), verifier.format)
                if row["answer"] is None:
                    raise ValueError(f"{spec_name(spec)}: its answers are not {verifier.format} answers")
    else:
        if answer_format == "task":
            raise ValueError(f"answer format 'task' needs a built-in task, not {spec_name(spec)}")
        if not spec.get("answer_column"):
            raise ValueError(f"{spec_name(spec)}: grading needs answer_column (the reference answers, or auto)")
        spec = resolve_spec({**spec, "answer_format": answer_format or spec.get("answer_format") or AUTO})
        rows = load_rows(spec, tokenizer)
        verifier = Verifier(spec["answer_format"])
    return [{**r, "prompt": _as_messages(r["prompt"]), "answer": str(r["answer"])} for r in rows], verifier
