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
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import yaml
from rich.table import Table

from aha.console import console
from aha.eval.evaluate import EvalResult, evaluate
from aha.models.loading import save_model
from aha.models.tiny import build_tiny, num_parameters
from aha.rewards import get as get_reward
from aha.tasks import get_task
from aha.train.config import GRPOConfig
from aha.train.grpo import GRPOTrainer
from aha.train.metrics import MetricsLogger
from aha.train.sft import SFTConfig, SFTTrainer
from aha.workflows.report import plot_run
from aha.workflows.rundir import RUN_DIR, prepare_output


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    digits: int = 2
    guess_fraction: float = 0.6
    hidden_size: int = 128
    num_hidden_layers: int = 4
    sft_steps: int = 400
    sft_examples: int = 20_000
    sft_learning_rate: float = 2e-3
    sft_batch_size: int = 64
    grpo_steps: int = 150
    grpo_learning_rate: float = 2e-5
    num_generations: int = 8
    prompts_per_step: int = 8
    max_completion_length: int = 40
    temperature: float = 1.0
    beta: float = 0.0
    eval_size: int = 300
    eval_samples: int = 4
    logging_steps: int = 10
    threads: int = 0  # 0: torch's default


def _table(before: EvalResult, after: EvalResult) -> Table:
    t = Table(title="Held-out evaluation: cold start → after GRPO")
    t.add_column("metric")
    t.add_column("cold start", justify="right")
    t.add_column("after GRPO", justify="right")
    t.add_column("change", justify="right")
    for name, key, pct in (
        ("greedy accuracy", "accuracy", True),
        ("sampled pass@1", "pass1", True),
        ("format rate", "format_rate", True),
        ("mean length (tokens)", "mean_length", False),
    ):
        b, a = getattr(before, key), getattr(after, key)
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.1f}")
        d = f"{100 * (a - b):+.1f} pts" if pct else f"{a - b:+.1f}"
        t.add_row(name, f(b), f(a), d)
    return t


def run_demo(cfg: DemoConfig, overwrite: bool = False) -> dict[str, Any]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    task = get_task("arithmetic", digits=cfg.digits, guess_fraction=cfg.guess_fraction)
    grpo_cfg = GRPOConfig(
        output_dir=str(cfg.out),
        seed=cfg.seed,
        learning_rate=cfg.grpo_learning_rate,
        lr_scheduler_type="constant",
        max_steps=cfg.grpo_steps,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.num_generations * cfg.prompts_per_step,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        logging_steps=cfg.logging_steps,
        save_steps=10**9,
        use_cpu=True,
    )
    run = prepare_output(cfg.out, RUN_DIR, overwrite)  # only once every setting has been validated
    (run / "config.yaml").write_text(yaml.safe_dump({"demo": asdict(cfg), "grpo": grpo_cfg.to_dict()}, sort_keys=False))
    logger = MetricsLogger(run / "metrics.jsonl")

    model, tok = build_tiny(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers, seed=cfg.seed)
    console.print(
        f"[bold]1. tiny model[/bold]: LlamaForCausalLM, {num_parameters(model) / 1e6:.2f} M parameters, "
        f"{len(tok)}-token character vocabulary"
    )
    console.print(
        f"[bold]2. cold start[/bold]: SFT for {cfg.sft_steps} steps on {cfg.sft_examples} traces "
        f"({100 * cfg.guess_fraction:.0f}% of them quick guesses that forget to carry)"
    )
    sft_rows = task.rows("sft", cfg.sft_examples, cfg.seed)
    sft_cfg = SFTConfig(
        output_dir=str(run / "sft"),
        learning_rate=cfg.sft_learning_rate,
        per_device_train_batch_size=cfg.sft_batch_size,
        max_steps=cfg.sft_steps,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
    )
    SFTTrainer(model, sft_cfg, sft_rows, tok, logger=logger, description="cold-start SFT").train()
    save_model(model, tok, run / "sft")

    held_out = task.rows("eval", cfg.eval_size, cfg.seed)
    ev = dict(
        n_samples=cfg.eval_samples, temperature=cfg.temperature, max_new_tokens=cfg.max_completion_length, seed=cfg.seed
    )
    before = evaluate(model, tok, held_out, task.check, **ev)
    console.print(
        f"[bold]3. held-out[/bold] ({cfg.eval_size} problems never trained on): greedy accuracy "
        f"{100 * before.accuracy:.1f}%, sampled pass@1 {100 * before.pass1:.1f}%"
    )

    console.print(
        f"[bold]4. GRPO[/bold]: {cfg.grpo_steps} steps × {cfg.prompts_per_step} prompts × "
        f"{cfg.num_generations} completions, rewards: correctness + format"
    )
    trainer = GRPOTrainer(
        model,
        [get_reward("correctness"), get_reward("format")],
        grpo_cfg,
        task.rows("train", max(1000, cfg.grpo_steps * cfg.prompts_per_step), cfg.seed),
        processing_class=tok,
    )
    trainer.logger = logger  # one metrics.jsonl for the whole run, lines tagged phase=sft / phase=grpo
    trainer.train()
    trainer.save_model(run / "model")

    after = evaluate(model, tok, held_out, task.check, **ev)
    console.print(_table(before, after))
    summary = {
        "accuracy_before": before.accuracy,
        "accuracy_after": after.accuracy,
        "pass1_before": before.pass1,
        "pass1_after": after.pass1,
        "format_before": before.format_rate,
        "format_after": after.format_rate,
        "length_before": before.mean_length,
        "length_after": after.mean_length,
        "grpo_steps": cfg.grpo_steps,
        "sft_steps": cfg.sft_steps,
        "eval_size": cfg.eval_size,
        "seed": cfg.seed,
        "parameters": num_parameters(model),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = plot_run(run)  # RUN/plots/*.png and RUN/report.md
    console.print(f"plots: {len(plots)} PNGs in {run / 'plots'}, report in {run / 'report.md'}")
    console.print(
        f"run directory: {run}  (model in {run / 'model'}, metrics in {run / 'metrics.jsonl'}); "
        f"{summary['seconds']:.0f} s"
    )
    return summary
