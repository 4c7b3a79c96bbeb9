"""``aha demo``: the R1 recipe in miniature, offline, in a few minutes on a 2-core CPU.

1. build a tiny character-level Llama (random weights, ~1 M parameters);
2. cold start (R1 phase 1): a short SFT on arithmetic traces. 40% of them work the sum out column
   by column inside ``<think>``; 60% are quick guesses (``<think>easy</think>``) that add the columns
   in the head and forget to carry — right when no column carries, wrong otherwise. The model leaves
   SFT with both habits and prefers the quick one;
3. evaluate on a held-out split that is never trained on;
4. reasoning RL (R1 phase 2): GRPO with a correctness and a format reward. Nothing tells the model to
   think, but completions that work it out are right more often, so their advantages are positive:
   the model learns to think before it answers — the "aha" in miniature;
5. evaluate again and print before → after.

It is the pipeline recipe ``recipes/demo.yaml`` (a ``cold-start`` SFT stage and a ``grpo`` stage, the held-out
evaluation after each), run by :func:`aha.workflows.pipeline.run_pipeline` into its pipeline directory, then the
comparison of the two evaluations (its ``summary.json``: ``<metric>_before`` / ``_after``) as a table and as bars
(``plots/held_out.png``). Each demo
option is a ``--set`` override of that recipe (:data:`OPTIONS` lists the keys it sets), so the demo is a smoke
test of the pipeline and nothing it accepts is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

RECIPE = Path(__file__).with_name("demo.yaml")  # shipped with the package; recipes/demo.yaml links to it


@dataclass(frozen=True)
class DemoOption:
    """``aha demo --<name>``: sets each of `keys` (pipeline ``--set`` keys) to its value."""

    name: str
    type: type
    help: str
    keys: tuple[str, ...]


OPTIONS = (
    DemoOption(
        "seed",
        int,
        "random seed for everything: model, data draws, training, evaluation",
        ("training.seed", "eval.seed", "eval.dataset.seed", "stages.*.dataset.seed"),
    ),
    DemoOption("digits", int, "digits of the addition task", ("eval.dataset.digits", "stages.*.dataset.digits")),
    DemoOption(
        "guess_fraction",
        float,
        "fraction of cold-start traces that are quick guesses forgetting the carry",
        ("stages.cold-start.dataset.guess_fraction",),
    ),
    DemoOption("hidden_size", int, "tiny model width", ("model.tiny.hidden_size",)),
    DemoOption("num_hidden_layers", int, "tiny model depth", ("model.tiny.num_hidden_layers",)),
    DemoOption("sft_steps", int, "cold-start SFT optimiser steps", ("stages.cold-start.training.max_steps",)),
    DemoOption("sft_examples", int, "cold-start traces drawn", ("stages.cold-start.dataset.n",)),
    DemoOption("sft_learning_rate", float, "cold-start learning rate", ("stages.cold-start.training.learning_rate",)),
    DemoOption(
        "sft_batch_size", int, "cold-start traces per step", ("stages.cold-start.training.per_device_train_batch_size",)
    ),
    DemoOption("grpo_steps", int, "GRPO optimiser steps", ("stages.grpo.training.max_steps",)),
    DemoOption("grpo_learning_rate", float, "GRPO learning rate", ("stages.grpo.training.learning_rate",)),
    DemoOption("grpo_prompts", int, "GRPO training prompts drawn", ("stages.grpo.dataset.n",)),
    DemoOption(
        "num_generations", int, "completions per prompt (GRPO group)", ("stages.grpo.training.num_generations",)
    ),
    DemoOption(
        "grpo_batch_size",
        int,
        "completions per GRPO step (prompts per step × num_generations)",
        ("stages.grpo.training.per_device_train_batch_size",),
    ),
    DemoOption(
        "max_completion_length",
        int,
        "completion tokens, in GRPO and in the evaluation",
        ("stages.grpo.training.max_completion_length", "eval.max_new_tokens"),
    ),
    DemoOption(
        "temperature",
        float,
        "sampling temperature, in GRPO and in the evaluation",
        ("stages.grpo.training.temperature", "eval.temperature"),
    ),
    DemoOption("beta", float, "GRPO KL coefficient", ("stages.grpo.training.beta",)),
    DemoOption("eval_size", int, "held-out problems", ("eval.dataset.n",)),
    DemoOption("eval_samples", int, "sampled completions per held-out problem (pass@1)", ("eval.samples",)),
    DemoOption("logging_steps", int, "steps between metrics lines", ("training.logging_steps",)),
)


def demo_sets(values: dict[str, Any]) -> list[str]:
    """The pipeline ``--set`` overrides of the demo options in `values` (name → value; None: the recipe's)."""
    by_name = {o.name: o for o in OPTIONS}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"demo: unknown option(s) {', '.join(unknown)}; options: {', '.join(by_name)}")
    sets = []
    for name, value in values.items():
        if value is None:
            continue
        kind = by_name[name].type
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise ValueError(f"demo: --{name.replace('_', '-')} must be {by_name[name].type.__name__}, got {value!r}")
        sets += [f"{key}={value}" for key in by_name[name].keys]
    return sets


ROWS = (  # label, summary key, shown as a percentage
    ("greedy accuracy", "accuracy", True),
    ("sampled pass@1", "pass1", True),
    ("format rate", "format", True),
    ("mean length (tokens)", "length", False),
)


def before_after_table(summary: dict[str, Any]) -> Table:
    """The held-out comparison: cold start → after GRPO → change (from the pipeline's ``summary.json``)."""
    missing = [
        f"{key}_{when}" for _, key, _ in ROWS for when in ("before", "after") if summary.get(f"{key}_{when}") is None
    ]
    if missing:
        raise ValueError(f"demo: the pipeline's summary lacks {', '.join(missing)}: were both stages evaluated?")
    t = Table(title="Held-out evaluation: cold start → after GRPO")
    t.add_column("metric")
    t.add_column("cold start", justify="right")
    t.add_column("after GRPO", justify="right")
    t.add_column("change", justify="right")
    for label, key, pct in ROWS:
        b, a = summary[f"{key}_before"], summary[f"{key}_after"]
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.1f}")
        d = f"{100 * (a - b):+.1f} pts" if pct else f"{a - b:+.1f}"
        t.add_row(label, f(b), f(a), d)
    return t


def run_demo(
    options: dict[str, Any] | None = None,
    sets: list[str] = (),
    out: str = "runs/demo",
    *,
    recipe: str | Path = RECIPE,
    overwrite: bool = False,
    plot: bool = True,
    threads: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the demo pipeline with the demo `options` and then the `sets` overrides into `out`; print
    and return its summary. `threads` > 0: torch's CPU threads."""
    import torch

    from aha.console import console
    from aha.workflows.pipeline import read_pipeline, run_pipeline

    if not Path(recipe).is_file():
        raise FileNotFoundError(f"demo: the pipeline recipe {recipe} does not exist: pass --recipe PATH/demo.yaml")
    if threads < 0:
        raise ValueError(f"demo: --threads must be >= 0, got {threads}")
    all_sets = [*demo_sets(options or {}), *sets]
    if not isinstance(read_pipeline(recipe, all_sets).get("eval"), dict):
        raise ValueError("demo: the comparison needs the held-out evaluation (the recipe's eval: section)")
    if threads > 0:
        torch.set_num_threads(threads)
    summary = run_pipeline(recipe, all_sets, out, plot=plot, overwrite=overwrite)
    console.print(before_after_table(summary))
    run = Path(summary["out"])
    if plot:  # the comparison as bars: RUN/plots/held_out.png
        from aha.workflows.report import draw_before_after

        (run / "plots").mkdir(exist_ok=True)
        draw_before_after(summary, run / "plots" / "held_out.png")
    final = run / summary["stages"][-1]["stage"] / "model"
    console.print(f"pipeline directory: {run} (final model in {final})")
    return summary
