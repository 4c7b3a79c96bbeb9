"""Held-out evaluation: greedy accuracy, sampled pass@1 over n samples, format rate, lengths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aha.rewards.builtin import STYLES
from aha.rollout.engine import generate_texts
from aha.rollout.sampler import SamplingParams


@dataclass
class EvalResult:
    accuracy: float  # greedy, 0-1
    pass1: float  # mean correctness over n sampled completions per question
    format_rate: float  # greedy completions in <think>…</think><answer>…</answer> form
    mean_length: float  # greedy completion tokens
    truncated: float  # greedy completions that hit max_new_tokens without EOS
    n_questions: int
    n_samples: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    is_correct: Callable[[str, dict[str, Any]], bool],
    *,
    n_samples: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 256,
    seed: int = 0,
) -> EvalResult:
    """Evaluate on `rows` (each with `prompt` and `answer`); ``is_correct(text, row)``, e.g. ``task.check``."""
    if not rows:
        raise ValueError("evaluation: no rows to evaluate")
    prompts = [r["prompt"] for r in rows]
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    texts, lengths, trunc = generate_texts(model, tokenizer, prompts, greedy, batch_size=batch_size, seed=seed)
    acc = sum(is_correct(t, r) for t, r in zip(texts, rows)) / len(rows)
    fmt = sum(bool(STYLES["think"].match(t)) for t in texts) / len(rows)
    pass1 = float("nan")
    if n_samples > 0:
        sampled = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        rep_prompts = [p for p in prompts for _ in range(n_samples)]
        s_texts, _, _ = generate_texts(model, tokenizer, rep_prompts, sampled, batch_size=batch_size, seed=seed + 1)
        rep_rows = [r for r in rows for _ in range(n_samples)]
        pass1 = sum(is_correct(t, r) for t, r in zip(s_texts, rep_rows)) / len(s_texts)
    return EvalResult(
        accuracy=acc,
        pass1=pass1,
        format_rate=fmt,
        mean_length=sum(lengths) / len(lengths),
        truncated=sum(trunc) / len(trunc),
        n_questions=len(rows),
        n_samples=n_samples,
    )
