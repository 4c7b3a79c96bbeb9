"""Running a validated recipe (:mod:`aha.workflows.recipe`): GRPO (``aha train``) or SFT (``aha sft``).

The run directory holds ``config.yaml`` (the resolved settings), ``metrics.jsonl``, ``model/`` (the trained
model, or the LoRA adapter), ``merged/`` (with ``merge_lora``: the adapter folded into the base), ``base/``
(a LoRA run on the tiny model: the base the adapter refers to), ``summary.json``, ``eval/`` (with ``eval``)
and ``plots/`` + ``report.md`` (from :func:`aha.workflows.report.plot_run`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from aha.console import console
from aha.models.loading import load_recipe_model, peft_model, save_model
from aha.train.distributed import is_main_process, make_accelerator, world_size
from aha.train.metrics import MetricsLogger
from aha.workflows.recipe import Recipe, check_columns


def _count(model: torch.nn.Module) -> tuple[int, int]:
    from aha.models.tiny import num_parameters

    return num_parameters(model), sum(p.numel() for p in model.parameters() if p.requires_grad)


def _save(recipe: Recipe, model: Any, tok: Any, run: Path, base_dir: Path | None, saved: bool) -> dict[str, str]:
    """Save model/ (or the adapter; `saved`: the trainer already wrote it) and point an adapter at its base;
    returns the directories written."""
    out = {"model": str(run / "model")}
    if not saved:
        save_model(model, tok, run / "model")
    adapter_cfg = run / "model" / "adapter_config.json"
    if base_dir is not None and adapter_cfg.is_file():  # point the adapter at the saved tiny base
        cfg = json.loads(adapter_cfg.read_text())
        cfg["base_model_name_or_path"] = str(base_dir.resolve())
        adapter_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def _merge(model: Any, tok: Any, run: Path) -> str:
    return str(save_model(model.merge_and_unload(), tok, run / "merged"))


def prepare_eval(recipe: Recipe, tok: Any) -> tuple[list[dict[str, Any]], Any]:
    """The eval rows and their verifier (loaded before training, so a bad eval spec fails early)."""
    from aha.eval.metrics import verified_rows

    ev = recipe.eval
    assert ev is not None
    return verified_rows(ev["dataset"], tok, ev["answer_format"])


def evaluate_recipe(recipe: Recipe, model: Any, tok: Any, data: tuple[list[dict[str, Any]], Any], label: str):
    """Greedy accuracy, pass@1 (and @k), format rate and lengths on the recipe's eval rows."""
    from aha.eval.evaluate import EvalConfig, evaluate

    ev = recipe.eval
    assert ev is not None
    rows, verifier = data
    n = ev["samples"]
    max_new = ev["max_new_tokens"] or getattr(recipe.config, "max_completion_length", None) or 256
    cfg = EvalConfig(
        n=n,
        ks=[k for k in (1, 4, 8) if k <= n],
        temperature=ev["temperature"],
        top_p=ev["top_p"],
        max_new_tokens=max_new,
        seed=ev["seed"],
        batch_size=ev["batch_size"],
    )
    # the tools the model trained with; else those of a tool-using eval task (as `aha eval` gives them)
    tools = recipe.tool_functions() or None
    if tools is None and verifier.task is not None and getattr(verifier.task, "tools", ()):
        from aha.tools import resolve_tools

        tools = resolve_tools(list(verifier.task.tools))
    limit = getattr(recipe.config, "max_tool_calling_iterations", None)
    _, metrics = evaluate(model, tok, rows, verifier, cfg, label=label, tools=tools, max_tool_iterations=limit)
    return metrics


# summary.json's before/after numbers: greedy accuracy, sampled pass@1, and the greedy completions' format rate
# and mean length (the numbers `aha demo` shows)
BEFORE_AFTER = (
    ("accuracy", "greedy_accuracy"),
    ("pass1", "pass@1"),
    ("format", "greedy_format_rate"),
    ("length", "greedy_mean_length"),
    ("tool_use", "greedy_tool_use_rate"),  # with tools: the share of greedy completions that call one
    ("tool_use_sampled", "tool_use_rate"),
)


def _before_after(summary: dict[str, Any], before: dict[str, Any] | None, after: dict[str, Any]) -> None:
    for key, metric in BEFORE_AFTER:
        if metric not in after:
            continue
        summary[f"{key}_after"] = after.get(metric)
        if before is not None:
            summary[f"{key}_before"] = before.get(metric)


def resume_point(recipe: Recipe, resume: str | None, overwrite: bool) -> Path | None:
    """The checkpoint ``--resume`` (``auto`` or a path) continues from; None: a fresh run. ``auto`` on a
    directory with no complete checkpoint starts fresh only when the directory is empty (or with --overwrite)."""
    if not resume:
        return None
    from aha.train.checkpoint import resolve_checkpoint

    out = Path(recipe.output_dir)
    found = resolve_checkpoint(out, "auto" if resume == "auto" else resume)
    if found is None and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"--resume: {out} holds no complete checkpoint-<step>/ to resume from (the run died before its first "
            "save_steps?); pass --overwrite to start over"
        )
    return found


def _logged_before(run: Path) -> dict[str, Any] | None:
    """The "before" evaluation a resumed run already logged (metrics.jsonl: phase eval, step 0)."""
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        if row.get("phase") == "eval" and row.get("step") == 0:
            return {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
    return None


def run_recipe(recipe: Recipe, overwrite: bool = False, plot: bool = True, resume: str | None = None) -> dict[str, Any]:
    """Train as the recipe says and write the run directory; returns the summary. `resume` ("auto" or a
    checkpoint path): continue a GRPO run from its checkpoint in the run directory."""
    from aha.data.load import load_rows, spec_name
    from aha.workflows.rundir import RUN_DIR, check_output, prepare_output, record_output

    start = time.perf_counter()
    seed = recipe.config.seed
    torch.manual_seed(seed)
    model, tok = load_recipe_model(recipe.model, seed)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = load_rows(recipe.dataset, tok)
    where = spec_name(recipe.dataset)
    if recipe.kind == "grpo":
        check_columns(recipe.rewards, set(rows[0]), where)
    else:
        for col in ("prompt", "completion"):
            if col not in rows[0]:
                raise ValueError(f"SFT needs the dataset column {col!r}, which {where} lacks (has: {sorted(rows[0])})")

    eval_data = prepare_eval(recipe, tok) if recipe.eval is not None else None
    ckpt = resume_point(recipe, resume, overwrite)
    # under `accelerate launch` / `torchrun` every process trains; only the first one writes and evaluates
    acc = make_accelerator(getattr(recipe.config, "use_cpu", False)) if world_size() > 1 else None
    main = is_main_process()
    if acc is not None:
        if ckpt is None:
            check_output(recipe.output_dir, RUN_DIR, overwrite)  # every process fails alike on a bad run directory
        acc.wait_for_everyone()  # every process has read the run directory before the first one touches it
    if ckpt is not None or not main:  # continue in the existing run directory
        run = Path(recipe.output_dir)
    else:
        run = prepare_output(recipe.output_dir, RUN_DIR, overwrite)  # only once everything has been validated
    try:
        logger = MetricsLogger(run / "metrics.jsonl" if main else None)
        base_dir = None
        if main:
            (run / "config.yaml").write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False, allow_unicode=True))
            if recipe.peft is not None and isinstance(recipe.model, dict):  # the adapter needs a base on disk
                base_dir = save_model(model, tok, run / "base")
        before = _logged_before(run) if ckpt is not None and main else None
        if main and recipe.eval is not None and recipe.eval["before"] and before is None:
            before = evaluate_recipe(recipe, model, tok, eval_data, "eval (before)")
            logger.log({"phase": "eval", "step": 0, **{f"eval/{k}": v for k, v in before.items()}})

        if recipe.kind == "grpo":
            from aha.train.grpo import GRPOTrainer

            console.print(
                f"[bold]GRPO[/bold] on {len(rows)} prompts, rewards: {', '.join(r.name for r in recipe.rewards)}"
            )
            recipe.config.output_dir = str(run)
            trainer = GRPOTrainer(
                model,
                [r.fn for r in recipe.rewards],
                recipe.config,
                rows,
                processing_class=tok,
                peft_config=recipe.lora_config(),
                tools=recipe.tool_functions() or None,
            )
            trainer.logger = logger
            state = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
            trainer.save_model(run / "model")  # every process takes part (FSDP gathers the weights); the first writes
            model = trainer.model
            result: dict[str, Any] = {"steps": state.global_step}
            logged = [r for r in state.log_history if "loss" in r or "reward" in r]  # not the summary or eval rows
            if logged:
                result |= {k: logged[-1][k] for k in ("reward", "loss") if k in logged[-1]}
        else:
            from aha.train.sft import SFTTrainer

            if recipe.peft is not None:
                model = peft_model(model, recipe.lora_config())
            console.print(f"[bold]SFT[/bold] on {len(rows)} examples")
            recipe.config.output_dir = str(run)
            sft = SFTTrainer(
                model, recipe.config, rows, tok, logger=logger, description="SFT", tools=recipe.tool_functions()
            )
            state = sft.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
            result = {"steps": state.global_step}
            logged = [r for r in state.log_history if "loss" in r]  # not the summary row
            if logged:
                result["loss"] = logged[-1]["loss"]
        if not main:
            return {"trainer": recipe.kind, **result}
        total, trainable = _count(model)
        dirs = _save(recipe, model, tok, run, base_dir, saved=recipe.kind == "grpo")
        if recipe.eval is not None:
            metrics = evaluate_recipe(recipe, model, tok, eval_data, "eval")
            logger.log({"phase": "eval", "step": result.get("steps"), **{f"eval/{k}": v for k, v in metrics.items()}})
            (run / "eval").mkdir(exist_ok=True)
            (run / "eval" / "summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if recipe.merge_lora:
            dirs["merged"] = _merge(model, tok, run)
        summary: dict[str, Any] = {"trainer": recipe.kind, "recipe": recipe.source, **result, **dirs}
        summary |= {"parameters": total, "trainable_parameters": trainable, "rows": len(rows)}
        if recipe.eval is not None:
            summary["eval"] = metrics
            _before_after(summary, before, metrics)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        (run / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if plot:
            try:
                from aha.workflows.report import plot_run

                plot_run(run)
            except Exception as e:  # plots are a convenience: never fail a finished run for them
                console.print(f"[yellow]plots skipped: {type(e).__name__}: {e}[/yellow]")
        console.print(f"run directory: {run} (model in {dirs['model']}); {summary['seconds']:.0f} s")
        return summary
    finally:
        if main:
            record_output(run)  # what this run wrote, in the marker (also when it fails)
