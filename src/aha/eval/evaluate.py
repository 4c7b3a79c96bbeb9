"""The evaluator: greedy and sampled completions of a model on rows, graded by a verifier.

:func:`evaluate` returns one record per question (its prompt, reference answer, greedy completion and ``n``
sampled ones, each with its extracted answer, correctness, ``format_ok``, length and truncation; pass@k and
maj@k) and the metrics:

* ``greedy_accuracy``: share of questions whose greedy completion is correct;
* ``pass@k`` (every k of ``ks``, and 1): the unbiased estimator over the ``n`` samples, averaged over questions;
  ``maj@k``: majority vote over the first k samples' answers (:mod:`aha.eval.metrics`);
* ``format_rate``: share of completions :func:`aha.data.answers.parse_reasoning` finds ``format_ok`` (one closed
  thought, then a non-empty answer);
* ``mean_length`` / ``max_length``: completion tokens, the EOS included; ``truncated``: share of completions that
  reached ``max_new_tokens`` without an EOS.

``format_rate``, the lengths and ``truncated`` are over the sampled completions; the same three prefixed
``greedy_`` are over the greedy ones.

Seeding: the greedy completions draw from one ``torch.Generator`` seeded ``seed``, the samples from one seeded
``seed + 1``, each used across the batches of ``batch_size`` prompts in order (a question's ``n`` samples are
consecutive). The numbers are a function of the model, the rows and the config alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from aha.data.answers import parse_reasoning
from aha.data.prompts import render_prompt
from aha.eval.metrics import Verifier, maj_at_k, pass_at_k
from aha.rollout.engine import generate_texts
from aha.rollout.sampler import SamplingParams
from aha.settings import Checked


@dataclass
class EvalConfig(Checked):
    """How to evaluate: ``n`` samples per question for pass@k/maj@k (k in ``ks``), sampling settings, seed."""

    n: int = 8  # sampled completions per question
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 64

    def validate(self) -> None:
        """The value rules (run at construction; errors name the command-line option)."""
        if self.n < 1:
            raise ValueError(f"--n must be at least 1, got {self.n}")
        if not self.ks:
            raise ValueError("--k needs at least one value")
        for k in self.ks:
            if k < 1:
                raise ValueError(f"--k values must be at least 1, got {k}")
            if k > self.n:
                raise ValueError(f"--k {k} is larger than --n {self.n}: pass@{k} needs at least {k} samples")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("--max-new-tokens and --batch-size must be at least 1")


def _judge(text: str, length: int, truncated: bool, row: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    return {
        "completion": text,
        "extracted": verifier.extract(text),
        "correct": verifier.is_correct(text, row["answer"], row),
        "format_ok": parse_reasoning(text, verifier.prefilled).format_ok,
        "length": length,
        "truncated": truncated,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def evaluate(
    model, tokenizer, rows: list[dict[str, Any]], verifier: Verifier, cfg: EvalConfig, label: str = "eval"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy and ``cfg.n`` sampled completions per row (each with ``prompt`` and ``answer``), graded by
    `verifier`. Returns (per-question records, metrics); see the module doc. The model is evaluated in eval mode
    and left in the mode it was in."""
    from aha.console import progress

    if not rows:
        raise ValueError("evaluation: no rows to evaluate")
    prompts = [r["prompt"] for r in rows]
    if tokenizer.chat_template is None:  # a base model: the question as plain text
        prompts = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    first = render_prompt(tokenizer, prompts[0])
    verifier = replace(verifier, prefilled=first.rstrip().endswith(("<think>", "<reasoning>")))
    greedy_p = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    sample_p = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    was_training = model.training
    model.eval()
    try:
        with progress() as bar:
            tid = bar.add_task(label, total=len(rows) * (1 + cfg.n), info="")

            def advance(size: int) -> None:
                bar.advance(tid, size)

            common = {"batch_size": cfg.batch_size, "on_batch": advance}
            g = generate_texts(model, tokenizer, prompts, greedy_p, seed=cfg.seed, **common)
            rep = [p for p in prompts for _ in range(cfg.n)]
            s = generate_texts(model, tokenizer, rep, sample_p, seed=cfg.seed + 1, **common)
    finally:
        model.train(was_training)
    records = []
    for i, row in enumerate(rows):
        greedy = _judge(g[0][i], g[1][i], g[2][i], row, verifier)
        span = range(i * cfg.n, (i + 1) * cfg.n)
        samples = [_judge(s[0][j], s[1][j], s[2][j], row, verifier) for j in span]
        correct = [x["correct"] for x in samples]
        answers = [x["extracted"] for x in samples]
        rec = {"index": i, "prompt": row["prompt"], "answer": row["answer"], "greedy": greedy, "samples": samples}
        rec["n_correct"] = sum(correct)
        rec["pass@k"] = {str(k): pass_at_k(cfg.n, sum(correct), k) for k in cfg.ks}
        rec["maj@k"] = {str(k): maj_at_k(answers, correct, k) for k in cfg.ks}
        records.append(rec)
    greedy_all = [r["greedy"] for r in records]
    sampled = [x for r in records for x in r["samples"]]
    metrics: dict[str, Any] = {"greedy_accuracy": _mean([x["correct"] for x in greedy_all])}
    for k in sorted(set(cfg.ks) | {1}):
        metrics[f"pass@{k}"] = _mean([pass_at_k(cfg.n, r["n_correct"], k) for r in records])
    for k in sorted(cfg.ks):
        metrics[f"maj@{k}"] = _mean([float(r["maj@k"][str(k)]) for r in records])
    for prefix, group in (("", sampled), ("greedy_", greedy_all)):
        metrics[prefix + "format_rate"] = _mean([x["format_ok"] for x in group])
        metrics[prefix + "mean_length"] = _mean([x["length"] for x in group])
        metrics[prefix + "max_length"] = max(x["length"] for x in group)
        metrics[prefix + "truncated"] = _mean([x["truncated"] for x in group])
    metrics["n_questions"] = len(rows)
    return records, metrics
