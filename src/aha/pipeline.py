"""Pipelines: the whole R1 recipe (cold-start SFT → GRPO → rejection sampling → SFT → GRPO) in one YAML.

A pipeline recipe has the recipe keys (:mod:`aha.recipe`) at the top and a list of ``stages``::

    model: {tiny: {hidden_size: 128}}      # the first stage's model
    eval: {dataset: {task: arithmetic, split: eval, n: 300}}   # held-out eval after every training stage
    training: {seed: 0}                    # defaults: each stage's keys replace these (mappings are merged;
                                           #   top-level training keys go to the stages whose config has them)
    stages:
      - {name: cold-start, kind: sft, dataset: {...}, training: {max_steps: 400}}
      - {name: grpo, kind: grpo, dataset: {...}, rewards: [correctness, format]}
      - {name: rs, kind: sample, dataset: {task: arithmetic, split: train, n: 200}, n: 8}
      - {name: sft2, kind: sft, training: {...}, set: ["training.max_steps=100"]}

Each stage starts from the previous stage's model (``model:`` or ``from: <stage name>`` say otherwise); an SFT
stage without a ``dataset`` trains on the latest ``sample`` stage's output. A ``sample`` stage takes the options
of :class:`aha.sample.SampleConfig` and a ``dataset`` (a data spec or an ``aha sample --data`` string).

``DIR/<i>-<name>/`` holds stage i (a run directory, or ``samples.jsonl`` + its pass rates); ``stage_done.json``,
written last, marks it finished. Re-running on the same DIR skips finished stages (their settings must be
unchanged) and redoes the first unfinished one. ``DIR/summary.json`` holds the held-out accuracy after every stage.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from aha.pipeline_read import MERGED, Stage, build_stages, read_pipeline
from aha.recipe import load_recipe
from aha.recipe_set import config_fields
from aha.sample import SampleConfig

DONE = "stage_done.json"
MARKER = "pipeline.yaml"


# ------------------------------------------------------------------------------------------ stage settings
def stage_config(raw: dict[str, Any], stage: Stage, model: Any, dataset: Any) -> dict[str, Any]:
    """The recipe (sft/grpo) or sample options of `stage`: top-level defaults under the stage's own keys."""
    if stage.kind == "sample":
        return {**stage.raw, "model": stage.raw.get("model", model)}
    out: dict[str, Any] = {"trainer": stage.kind}
    fields = config_fields(stage.kind)
    for k, v in raw.items():
        if k in ("stages", "model"):
            continue
        if k == "training":
            v = {f: x for f, x in (v or {}).items() if f in fields}
        out[k] = copy.deepcopy(v)
    for k, v in stage.raw.items():
        merge = k in MERGED and isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = {**out[k], **v} if merge else copy.deepcopy(v)
    out["model"] = stage.raw.get("model", model)
    if "dataset" not in stage.raw and dataset is not None:
        out["dataset"] = dataset
    if stage.kind == "sft":
        out.pop("rewards", None)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _placeholder(tmp: Path) -> str:
    """A tiny file shaped like a sample stage's output (validation before the samples exist)."""
    row = {"prompt": [{"role": "user", "content": "1+1"}], "answer": "2", "pass_rate": 1.0}
    row["completion"] = [{"role": "assistant", "content": "<think>1+1=2</think><answer>2</answer>"}]
    path = tmp / "samples.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return str(path)


def plan(raw: dict[str, Any], stages: list[Stage]) -> list[dict[str, Any]]:
    """Each stage's config, with ``@<stage dir>`` standing for an earlier stage's model or samples."""
    model, samples, model_of, configs = raw.get("model"), None, {}, []
    for st in stages:
        start = model_of[st.source] if st.source else model
        configs.append(stage_config(raw, st, start, samples if st.kind == "sft" else None))
        trained = any(c.get("trainer") for c in configs[:-1])
        if trained and isinstance(configs[-1].get("eval"), dict):  # "before" = the previous stage's "after"
            configs[-1]["eval"] = {**configs[-1]["eval"], "before": False}
        if st.kind == "sample":
            samples = f"@{st.dirname}"
            model_of[st.name] = configs[-1]["model"]
        else:
            model_of[st.name] = f"@{st.dirname}"
        model = model_of[st.name]
    return configs


def _concrete(value: Any, out: Path, first_model: Any, placeholder: str | None) -> Any:
    """Replace ``@<stage dir>`` references by paths (or, for validation, the first model / a placeholder)."""
    if isinstance(value, str) and value.startswith("@"):
        return first_model if placeholder is not None else str(out / value[1:])
    return value


def _dataset(config: dict[str, Any], out: Path, placeholder: str | None) -> Any:
    ds = config.get("dataset")
    if isinstance(ds, str) and ds.startswith("@"):
        return {"path": placeholder or str(out / ds[1:] / "samples.jsonl")}
    return ds


def _training_recipe(config: dict[str, Any], out: Path, first: Any, placeholder: str | None, where: Path) -> Any:
    data = {**config, "model": _concrete(config["model"], out, first, placeholder)}
    data["dataset"] = _dataset(config, out, placeholder)
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return load_recipe(where, kind=config["trainer"], out=str(out / where.stem))


def _sample_config(config: dict[str, Any]) -> SampleConfig:
    cfg = SampleConfig(**{k: v for k, v in config.items() if k not in ("model", "dataset")})
    cfg.validate()
    if cfg.rewards:
        from aha.rewards import resolve

        for spec in cfg.rewards:
            resolve(spec)
    return cfg


def validate(raw: dict[str, Any], stages: list[Stage], out: Path) -> list[str]:
    """Check every stage without training (later stages are checked on the first model); returns notes."""
    from aha.sample import load_sample_data

    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        ph = _placeholder(Path(tmp))
        for st, config in zip(stages, plan(raw, stages)):
            try:
                if st.kind == "sample":
                    load_sample_data(config["dataset"], dataclasses.replace(_sample_config(config), limit=1))
                    notes.append(f"stage {st.dirname}: sample from {config['model']!r}")
                else:
                    recipe = _training_recipe(config, out, raw.get("model"), ph, Path(tmp) / f"{st.dirname}.yaml")
                    mine = recipe.notes
                    if str(config["model"]).startswith("@"):
                        mine = [f"model: {config['model']}'s (checked on the first stage's model)"]
                        mine += [n for n in recipe.notes if not n.startswith("model:")]
                    if str(config.get("dataset")).startswith("@"):
                        mine = [n for n in mine if not n.startswith("dataset:")]
                        mine.append(f"dataset: {config['dataset']}'s samples.jsonl (prompt, completion: for SFT)")
                    notes += [f"stage {st.dirname}: {n}" for n in mine]
            except (ValueError, FileNotFoundError, TypeError) as e:
                raise ValueError(f"stage {st.dirname}: {e}") from None
    return notes


# ------------------------------------------------------------------------------------------ running
def run_training_stage(config: dict[str, Any], out: Path, stage_dir: Path, plot: bool) -> dict[str, Any]:
    """Train one sft/grpo stage into `stage_dir` (its recipe is kept in ``DIR/recipes/``)."""
    from aha.recipe_run import run_recipe

    recipe = _training_recipe(config, out, None, None, out / "recipes" / f"{stage_dir.name}.yaml")
    return run_recipe(recipe, overwrite=True, plot=plot)


def run_sample_stage(config: dict[str, Any], out: Path, stage_dir: Path) -> dict[str, Any]:
    """Rejection-sample with the stage's model into ``stage_dir/samples.jsonl``."""
    from aha.recipe_run import load_recipe_model
    from aha.sample import run_sample

    cfg = _sample_config(config)
    model, tok = load_recipe_model(_concrete(config["model"], out, None, None), cfg.seed)
    stage_dir.mkdir(parents=True, exist_ok=True)
    summary = run_sample(model, tok, config["dataset"], stage_dir / "samples.jsonl", cfg, overwrite=True)
    if not summary["kept"]:
        raise ValueError(f"stage {stage_dir.name}: no completion was accepted: nothing to fine-tune on")
    (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _row(stage: Stage, summary: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage.dirname, "kind": stage.kind, "seconds": summary.get("seconds")}
    if stage.kind == "sample":
        row |= {"kept": summary["kept"], "mean_pass_rate": summary["mean_pass_rate"]}
        for k in ("accuracy", "pass1", "format"):  # the model is unchanged
            row[k] = (previous or {}).get(k)
    else:
        row |= {"accuracy": summary.get("accuracy_after"), "pass1": summary.get("pass1_after")}
        row["format"] = summary.get("format_after")
        row |= {k: summary[k] for k in ("steps", "reward", "loss") if k in summary}
    return row


def prepare_out(out: Path, raw: dict[str, Any], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"--out {out} holds files but no {MARKER}: not a pipeline directory; choose another")
    if overwrite and (out / MARKER).is_file():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / MARKER, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from aha.train.logging import console

    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    table = Table(title="held-out accuracy after each stage")
    for col in ("stage", "kind", "accuracy", "pass1", "format", "seconds"):
        table.add_column(col, justify="left" if col in ("stage", "kind") else "right")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in ("stage", "kind", "accuracy", "pass1", "format", "seconds")))
    console.print(table)


def run_pipeline(
    path: str | Path, sets: list[str] = (), out: str | None = None, plot: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Run (or resume) every stage of the pipeline; writes and returns ``DIR/summary.json``."""
    from aha.train.logging import console

    raw = read_pipeline(path, sets)
    stages = build_stages(raw)
    run_dir = Path(out or f"runs/{Path(path).stem}")
    validate(raw, stages, run_dir)
    prepare_out(run_dir, raw, overwrite)
    rows: list[dict[str, Any]] = []
    for st, config in zip(stages, plan(raw, stages)):
        stage_dir = run_dir / st.dirname
        done = stage_dir / DONE
        if done.is_file():
            record = json.loads(done.read_text())
            if record["config"] != json.loads(json.dumps(config)):
                raise ValueError(
                    f"stage {st.dirname} finished with other settings than the recipe's now; pass --overwrite to "
                    f"start over, or --out another directory"
                )
            console.print(f"[dim]stage {st.dirname}: finished earlier, skipped[/dim]")
            rows += [{**r, "resumed": True} for r in record["rows"]]
            continue
        if stage_dir.exists():
            shutil.rmtree(stage_dir)  # an unfinished stage starts over
        console.rule(f"stage {st.dirname} ({st.kind})")
        new: list[dict[str, Any]] = []
        if st.kind == "sample":
            summary = run_sample_stage(config, run_dir, stage_dir)
        else:
            summary = run_training_stage(config, run_dir, stage_dir, plot)
            if not rows and summary.get("accuracy_before") is not None:  # the starting model's accuracy
                new.append({"stage": "0-start", "kind": "-", "accuracy": summary["accuracy_before"]})
                new[-1] |= {"pass1": summary.get("pass1_before"), "format": summary.get("format_before")}
        new.append(_row(st, summary, (rows + new)[-1] if rows + new else None))
        rows += new
        _write_atomic(done, json.dumps({"config": config, "rows": new}, indent=2, default=str) + "\n")
        _write_atomic(run_dir / "summary.json", json.dumps({"stages": rows}, indent=2) + "\n")
    result = {"pipeline": str(path), "out": str(run_dir), "stages": rows}
    _write_atomic(run_dir / "summary.json", json.dumps(result, indent=2) + "\n")
    print_table(rows)
    return result


def dry_run_report(path: str | Path, sets: list[str] = (), out: str | None = None) -> str:
    """Every stage's resolved settings as YAML, then what was checked, as comments."""
    raw = read_pipeline(path, sets)
    stages = build_stages(raw)
    run_dir = Path(out or f"runs/{Path(path).stem}")
    notes = validate(raw, stages, run_dir)
    configs = plan(raw, stages)
    resolved = {"out": str(run_dir), "stages": [{"stage": s.dirname, **c} for s, c in zip(stages, configs)]}
    text = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=100)
    lines = ["# --dry-run: pipeline is valid; nothing was trained", "# @<stage>: that stage's model or samples"]
    return text + "\n".join([*lines, *(f"# {n}" for n in notes)]) + "\n"
