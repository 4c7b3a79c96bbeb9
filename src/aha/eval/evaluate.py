"""Held-out evaluation: greedy accuracy, sampled pass@1 over n samples, format rate, lengths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aha.data.prompts import encode_prompts, eos_ids, render_prompt
from aha.rewards.builtin import STYLES
from aha.rollout.sampler import SamplingParams, sample


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


def generate_texts(
    model,
    tokenizer,
    prompts: list[Any],
    params: SamplingParams,
    *,
    batch_size: int = 128,
    seed: int = 0,
    backend: str = "fast",
) -> tuple[list[str], list[int], list[bool]]:
    """Completions for `prompts` (rendered with the chat template when conversational).
    Returns (texts, token lengths, truncated flags)."""
    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model)
    gen = torch.Generator(device=device).manual_seed(seed)
    texts, lengths, truncated = [], [], []
    for s in range(0, len(prompts), batch_size):
        chunk = [render_prompt(tokenizer, p) for p in prompts[s : s + batch_size]]
        ids, mask = encode_prompts(tokenizer, chunk, device=device)
        comp = sample(model, ids, mask, params, eos, tokenizer.pad_token_id, generator=gen, backend=backend)
        for row in comp.tolist():
            ended = next((i for i, t in enumerate(row) if t in eos), None)
            n = len(row) if ended is None else ended + 1
            texts.append(tokenizer.decode(row[:n], skip_special_tokens=True))
            lengths.append(n)
            truncated.append(ended is None)
    return texts, lengths, truncated


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
