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

Sizes: ``max_new_tokens`` and ``batch_size`` left None are sized for the model's device (:data:`DEVICE_DEFAULTS`:
256 tokens in batches of 16 on a CPU, 512 in batches of 64 on a GPU); :meth:`EvalConfig.for_device` fills them in.

Progress: the console's bar, and, where the console is not a terminal (a log file, CI), a line per batch at most
every :data:`PROGRESS_EVERY_S` seconds and at the end of each phase (``eval: greedy 32/200 rows · 41 s``, then the
greedy accuracy and the sampled pass@1 so far); ``AHA_NO_PROGRESS=1`` silences both, as it does ``aha train``'s bar.

Seeding: the greedy completions draw from one ``torch.Generator`` seeded ``seed``, the samples from one seeded
``seed + 1``, each used across the batches of ``batch_size`` prompts in order (a question's ``n`` samples are
consecutive). The numbers are a function of the model, the rows and the config alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from aha.data.answers import parse_reasoning
from aha.data.prompts import completion_text, render_prompt
from aha.eval.metrics import Verifier, maj_at_k, pass_at_k
from aha.rollout.engine import generate_texts
from aha.rollout.sampler import SamplingParams
from aha.rollout.tool_loop import complete_with_tools
from aha.settings import Checked
from aha.tools.toolbox import Toolbox

# max_new_tokens and batch_size by device type: a CPU gets shorter completions in smaller batches (a real model's
# 512-token completions in batches of 64 take tens of minutes there)
DEVICE_DEFAULTS = {
    "cpu": {"max_new_tokens": 256, "batch_size": 16},
    "cuda": {"max_new_tokens": 512, "batch_size": 64},
}
PROGRESS_EVERY_S = 10.0  # the least time between two progress lines (where the console is not a terminal)


def device_defaults(device: str | torch.device) -> dict[str, int]:
    """The sizes :data:`DEVICE_DEFAULTS` gives `device` (anything but a CUDA GPU gets the CPU's)."""
    return DEVICE_DEFAULTS["cuda" if torch.device(device).type == "cuda" else "cpu"]


@dataclass
class EvalConfig(Checked):
    """How to evaluate: ``n`` samples per question for pass@k/maj@k (k in ``ks``), sampling settings, seed.
    ``max_new_tokens`` / ``batch_size`` None: sized for the device (:meth:`for_device`)."""

    n: int = 8  # sampled completions per question
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int | None = None  # None: DEVICE_DEFAULTS
    seed: int = 0
    batch_size: int | None = None  # None: DEVICE_DEFAULTS

    def for_device(self, device: str | torch.device) -> EvalConfig:
        """This config with the sizes left None filled in for `device` (explicit values are kept)."""
        sizes = {k: v for k, v in device_defaults(device).items() if getattr(self, k) is None}
        return replace(self, **sizes) if sizes else self

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
        if any(v is not None and v < 1 for v in (self.max_new_tokens, self.batch_size)):
            raise ValueError("--max-new-tokens and --batch-size must be at least 1")


def _judge(text: str, length: int, truncated: bool, row: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    return {  # with tools: `text` is the last turn's, `length` the model's own tokens (tool results not counted)
        "completion": text,
        "extracted": verifier.extract(text),
        "correct": verifier.is_correct(text, row["answer"], row),
        "format_ok": parse_reasoning(text, verifier.prefilled).format_ok,
        "length": length,
        "truncated": truncated,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


class ProgressLines:
    """Progress as plain lines (``label: greedy 32/200 rows · 41 s · …``) for a console whose bar cannot draw (not
    a terminal): at most one every :data:`PROGRESS_EVERY_S` seconds, unless forced (the end of a phase)."""

    def __init__(self, console: Any, label: str, enabled: bool) -> None:
        self.console, self.label, self.enabled = console, label, enabled
        self.start = self.last = time.perf_counter()

    def update(self, what: str, info: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < PROGRESS_EVERY_S):
            return
        self.last = now
        line = " · ".join([f"{self.label}: {what}", f"{now - self.start:.0f} s"] + ([info] if info else []))
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


class TextEngine(Protocol):
    """What generates for :func:`evaluate` instead of the local model (e.g. :class:`aha.rollout.vllm.VLLMRollout`):
    one completion per prompt as (texts, token lengths with the EOS, truncated flags), seeded by `seed`."""

    def complete_with_lengths(
        self, prompts: list[Any], params: SamplingParams, seed: int
    ) -> tuple[list[str], list[int], list[bool]]: ...


def evaluate(
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    verifier: Verifier,
    cfg: EvalConfig,
    label: str = "eval",
    engine: TextEngine | None = None,
    tools: Sequence[Callable] | None = None,
    max_tool_iterations: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy and ``cfg.n`` sampled completions per row (each with ``prompt`` and ``answer``), graded by
    `verifier`. Returns (per-question records, metrics); see the module doc. The model is evaluated in eval mode
    and left in the mode it was in. With `engine` (then `model` may be None) the completions come from it, in one
    call per phase, and `cfg`'s sizes must already be set (``batch_size`` is not used).

    With `tools` the model may call them (``aha.rollout.tool_loop``, at most `max_tool_iterations` rounds, None: as
    the length allows): each completion is the whole conversation after the prompt (``max_new_tokens`` bounds
    it), graded on its last turn, and its record has ``calls``, ``tool_failures``, ``turns`` and ``conversation``;
    the metrics add ``tool_use_rate`` (share of completions that called a tool), ``tool_calls`` (per completion)
    and ``tool_failure_rate`` (per call), over the samples and, prefixed ``greedy_``, the greedy ones."""
    from aha.console import progress

    if not rows:
        raise ValueError("evaluation: no rows to evaluate")
    toolbox = Toolbox(list(tools)) if tools else None
    if toolbox is not None and (engine is not None or tokenizer.chat_template is None):
        raise ValueError(
            "evaluation with tools needs the local model (not --backend vllm) and a chat template (the template "
            "renders the tools and their results)"
        )
    if model is not None:
        cfg = cfg.for_device(next(model.parameters()).device)
    elif engine is None:
        raise ValueError("evaluate: give a model or an engine")
    prompts = [r["prompt"] for r in rows]
    if tokenizer.chat_template is None:  # a base model: the question as plain text
        prompts = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    first = render_prompt(tokenizer, prompts[0])
    verifier = replace(verifier, prefilled=first.rstrip().endswith(("<think>", "<reasoning>")))
    greedy_p = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    sample_p = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    rep = [p for p in prompts for _ in range(cfg.n)]  # a question's n samples are consecutive
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    try:
        with progress() as bar:
            tid = bar.add_task(label, total=len(prompts) + len(rep), info="")
            lines = ProgressLines(bar.console, label, enabled=not bar.disable and not bar.console.is_terminal)

            def generate(phase: str, todo: list[Any], params: SamplingParams, seed: int, unit: str, info: str):
                done = 0

                def advance(size: int) -> None:
                    nonlocal done
                    done += size
                    bar.advance(tid, size)
                    if done < len(todo):  # the phase's last line comes with its numbers
                        lines.update(f"{phase} {done}/{len(todo)} {unit}", info)

                if engine is not None:
                    out = engine.complete_with_lengths(todo, params, seed)
                    advance(len(todo))
                    return out
                kw = {"batch_size": cfg.batch_size, "seed": seed, "on_batch": advance}
                if toolbox is not None:
                    tr = complete_with_tools(
                        model, tokenizer, todo, params, toolbox, max_iterations=max_tool_iterations, **kw
                    )
                    texts = [completion_text(c) for c in tr.completions]
                    extra = [
                        {"calls": c, "tool_failures": f, "turns": t, "conversation": conv}
                        for c, f, t, conv in zip(tr.calls, tr.failures, tr.turns, tr.completions)
                    ]
                    return texts, [sum(m) for m in tr.tool_mask], [not e for e in tr.ended], extra
                return generate_texts(model, tokenizer, todo, params, **kw)

            def judged(out, rows_of) -> list[dict[str, Any]]:
                extra = out[3] if len(out) > 3 else [{}] * len(out[0])
                return [
                    _judge(out[0][i], out[1][i], out[2][i], rows_of(i), verifier) | extra[i] for i in range(len(out[0]))
                ]

            g = generate("greedy", prompts, greedy_p, cfg.seed, "rows", "")
            greedy = judged(g, lambda i: rows[i])
            info = f"greedy accuracy {_mean([x['correct'] for x in greedy]):.3f}"
            lines.update(f"greedy {len(prompts)}/{len(prompts)} rows", info, force=True)
            bar.update(tid, info=info)
            s = generate("sampled", rep, sample_p, cfg.seed + 1, "completions", info)
            sampled = judged(s, lambda j: rows[j // cfg.n])
            info += f" · pass@1 {_mean([x['correct'] for x in sampled]):.3f}"
            lines.update(f"sampled {len(rep)}/{len(rep)} completions", info, force=True)
            bar.update(tid, info=info)
    finally:
        if model is not None:
            model.train(was_training)
    records = []
    for i, row in enumerate(rows):
        samples = sampled[i * cfg.n : (i + 1) * cfg.n]
        correct = [x["correct"] for x in samples]
        answers = [x["extracted"] for x in samples]
        rec = {"index": i, "prompt": row["prompt"], "answer": row["answer"], "greedy": greedy[i], "samples": samples}
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
        if toolbox is not None:
            calls = sum(x["calls"] for x in group)
            metrics[prefix + "tool_use_rate"] = _mean([float(x["calls"] > 0) for x in group])
            metrics[prefix + "tool_calls"] = _mean([x["calls"] for x in group])
            metrics[prefix + "tool_failure_rate"] = sum(x["tool_failures"] for x in group) / calls if calls else 0.0
    metrics["n_questions"] = len(rows)
    return records, metrics
