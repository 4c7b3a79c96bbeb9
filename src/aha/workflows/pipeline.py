"""Pipelines: the whole R1 recipe (cold-start SFT → GRPO → rejection sampling → SFT → GRPO) in one YAML.

A pipeline recipe has the recipe keys (:mod:`aha.workflows.recipe`) at the top and a list of ``stages``::

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
of :class:`aha.workflows.sampling.SampleConfig` and a ``dataset`` (a data spec or an ``aha sample --data`` string).

``DIR/<i>-<name>/`` holds stage i (a run directory, or ``samples.jsonl`` + its pass rates); ``stage_done.json``,
written last, marks it finished. Re-running on the same DIR skips finished stages (their settings must be
unchanged) and continues the first unfinished one where it stopped when its settings are unchanged (a training
stage from its newest intact checkpoint, a sample stage from its last chunk; Ctrl-C or SIGTERM saves one on the
way out), else from the start. ``DIR/summary.json`` holds the held-out numbers after every stage
(``stages``: greedy accuracy, sampled pass@1, the greedy completions' format rate and mean length, steps, seconds),
the first evaluation against the last (``accuracy_before``/``_after``, ``pass1_…``, ``format_…``, ``length_…``)
and the seconds of all stages.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aha.models.loading import PIPELINE_MARKER, STAGE_DONE
from aha.workflows.recipe import TOP_KEYS, apply_set, config_fields, load_recipe, parse_value, read_recipe, suggest
from aha.workflows.rundir import OutputKind, record_output
from aha.workflows.sampling import SampleConfig

KINDS = ("sft", "grpo", "sample")
META = ("name", "kind", "from", "set")
SAMPLE_KEYS = ("model", "dataset", *(f.name for f in dataclasses.fields(SampleConfig)))
MERGED = ("training", "eval", "peft")


@dataclass
class Stage:
    index: int
    name: str
    kind: str
    raw: dict[str, Any]  # the stage's own keys (no meta keys)
    source: str | None = None  # `from:` the stage whose model this one starts from

    @property
    def dirname(self) -> str:
        return f"{self.index}-{self.name}"


def _stage_list(raw: dict[str, Any]) -> list[dict[str, Any]]:
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise ValueError("stages: a pipeline needs a non-empty list of stages ({name, kind, ...})")
    return stages


def _targets(stages: list[dict[str, Any]], seg: str) -> list[dict[str, Any]]:
    if seg == "*":
        return stages
    if seg.lstrip("-").isdigit():
        i = int(seg)
        if not -len(stages) <= i < len(stages):
            raise ValueError(f"the pipeline has {len(stages)} stages, no index {i}")
        return [stages[i]]
    names = [s.get("name") for s in stages]
    if seg not in names:
        raise ValueError(f"no stage {seg!r}{suggest(seg, [n for n in names if n])}; use its name, index or *")
    return [stages[names.index(seg)]]


def _set_sample(stage: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    key = path[0]
    if key not in SAMPLE_KEYS:
        raise ValueError(f"a sample stage has no key {key!r}{suggest(key, SAMPLE_KEYS)}")
    if key == "dataset" and len(path) == 2:
        sub = {"dataset": dict(stage.get("dataset") or {})}
        apply_set(sub, f"dataset.{path[1]}={text}", "sft")
        stage["dataset"] = sub["dataset"]
        return
    if len(path) != 1:
        raise ValueError(f"sample stage key {key!r} has no sub-keys")
    default = getattr(SampleConfig(), key, None)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and key != "dataset" and not isinstance(value, type(default)):
        raise ValueError(f"{key} must be {type(default).__name__}, got {value!r}")
    stage[key] = value


def apply_pipeline_set(raw: dict[str, Any], assignment: str, base: Path | None = None) -> None:
    """One ``--set``: ``stages.<name|index|*>.<key>=value`` (checked against the stage's kind; ``*``: every stage
    that has the key) or a top-level recipe key (``eval.samples=1``, ``model=...``)."""
    key, eq, text = assignment.partition("=")
    path = key.strip().split(".")
    if not eq or not key.strip():
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. stages.grpo.training.max_steps=2")
    if path[0] != "stages":
        if path[0] == "training" and len(path) == 2:
            fields = config_fields("grpo") | config_fields("sft")
            if path[1] not in fields:
                raise ValueError(f"--set {key}: no trainer has the field {path[1]!r}{suggest(path[1], fields)}")
            raw.setdefault("training", {})[path[1]] = parse_value(text)
            return
        apply_set(raw, assignment, "grpo", base)
        return
    if len(path) < 3:
        raise ValueError(f"--set {key}: expected stages.<name|index|*>.<key>=value")
    stages, rest, applied, errors = _stage_list(raw), path[2:], 0, []
    for stage in _targets(stages, path[1]):
        try:
            if rest[0] in META:
                stage[rest[0]] = parse_value(text)
            elif stage.get("kind") == "sample":
                _set_sample(stage, rest, parse_value(text), text)
            else:
                view = {k: v for k, v in stage.items() if k not in META}
                apply_set(view, f"{'.'.join(rest)}={text}", stage.get("kind", "grpo"), base)
                stage.update(view)
            applied += 1
        except ValueError as e:
            errors.append(str(e))
    if errors and (path[1] != "*" or not applied):
        raise ValueError(f"--set {key}: {errors[0]}")


def read_pipeline(path: str | Path, sets: list[str] = ()) -> dict[str, Any]:
    """The pipeline mapping with the ``--set`` overrides applied; unknown keys are errors."""
    raw = copy.deepcopy(read_recipe(path))  # YAML anchors share objects: --set must change one stage only
    for s in sets:
        apply_pipeline_set(raw, s, Path(path).resolve().parent)
    for key in raw:
        if key not in (*TOP_KEYS, "stages") or key == "trainer":
            raise ValueError(f"{path}: unknown pipeline key {key!r}{suggest(key, (*TOP_KEYS, 'stages'))}")
    return raw


def build_stages(raw: dict[str, Any], base: Path | None = None) -> list[Stage]:
    """The stages of pipeline `raw`, checked; `base`: the pipeline file's directory (relative reward files)."""
    out: list[Stage] = []
    for i, s in enumerate(_stage_list(raw), 1):
        name, kind = s.get("name") or f"stage{i}", s.get("kind")
        if kind not in KINDS:
            raise ValueError(f"stage {i} ({name}): kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(name, str) or "/" in name or name in [x.name for x in out]:
            raise ValueError(f"stage {i}: names must be unique and contain no '/', got {name!r}")
        source = s.get("from")
        if source is not None and source not in [x.name for x in out]:
            raise ValueError(f"stage {name}: from: {source!r} is not an earlier stage")
        stage = Stage(i, name, kind, {k: v for k, v in s.items() if k not in META}, source)
        for assignment in s.get("set") or []:
            if kind == "sample":
                k, _, text = str(assignment).partition("=")
                _set_sample(stage.raw, k.split("."), parse_value(text), text)
            else:
                apply_set(stage.raw, str(assignment), kind, base)
        if kind == "sample":
            for k in stage.raw:
                if k not in SAMPLE_KEYS:
                    raise ValueError(f"stage {name}: a sample stage has no key {k!r}{suggest(k, SAMPLE_KEYS)}")
            if "dataset" not in stage.raw:
                raise ValueError(f"stage {name}: a sample stage needs a dataset (the prompts to sample)")
        out.append(stage)
    return out


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


def _training_recipe(
    config: dict[str, Any], out: Path, first: Any, placeholder: str | None, where: Path, base: Path | None
) -> Any:
    data = {**config, "model": _concrete(config["model"], out, first, placeholder)}
    data["dataset"] = _dataset(config, out, placeholder)
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return load_recipe(where, kind=config["trainer"], out=str(out / where.stem), base=base)


def _sample_config(config: dict[str, Any], base: Path | None) -> SampleConfig:
    cfg = SampleConfig(**{k: v for k, v in config.items() if k not in ("model", "dataset")})
    if cfg.rewards:
        from aha.rewards import resolve
        from aha.rewards.custom import anchored

        if base is not None:  # relative reward files are the pipeline file's neighbours
            cfg.rewards = [anchored(spec, base) for spec in cfg.rewards]
        for spec in cfg.rewards:
            resolve(spec)
    return cfg


def validate(raw: dict[str, Any], stages: list[Stage], out: Path, base: Path | None = None) -> list[str]:
    """Check every stage without training (later stages are checked on the first model); returns notes. `base`:
    the pipeline file's directory (where relative reward files are)."""
    from aha.workflows.sampling import load_sample_data

    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        ph = _placeholder(Path(tmp))
        for st, config in zip(stages, plan(raw, stages)):
            try:
                if st.kind == "sample":
                    load_sample_data(config["dataset"], dataclasses.replace(_sample_config(config, base), limit=1))
                    notes.append(f"stage {st.dirname}: sample from {config['model']!r}")
                else:
                    recipe = _training_recipe(config, out, raw.get("model"), ph, Path(tmp) / f"{st.dirname}.yaml", base)
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
def run_training_stage(
    config: dict[str, Any], out: Path, stage_dir: Path, plot: bool, base: Path | None = None
) -> dict[str, Any]:
    """Train one sft/grpo stage into `stage_dir` (its recipe is kept in ``DIR/recipes/``), continuing from its
    newest intact checkpoint when an earlier attempt with the same settings left one."""
    from aha.workflows.run import run_recipe

    recipe = _training_recipe(config, out, None, None, out / "recipes" / f"{stage_dir.name}.yaml", base)
    return run_recipe(recipe, overwrite=True, plot=plot, resume=_resume_point(recipe, stage_dir))


def _resume_point(recipe: Any, stage_dir: Path) -> str | None:
    """The checkpoint an unfinished training stage continues from: its newest intact one when the stage ran with
    these settings before; None (start the stage over) otherwise."""
    from aha.console import console
    from aha.train.checkpoint import list_checkpoints, resolve_checkpoint

    config = stage_dir / "config.yaml"
    if not list_checkpoints(stage_dir) or not config.is_file():
        return None
    if yaml.safe_load(config.read_text()) != yaml.safe_load(yaml.safe_dump(recipe.resolved(), allow_unicode=True)):
        console.print(
            f"[yellow]stage {stage_dir.name}: its settings changed since it stopped: starting it over[/yellow]"
        )
        return None
    try:
        found = resolve_checkpoint(stage_dir, "auto")
    except ValueError as e:
        console.print(f"[yellow]stage {stage_dir.name}: {e}: starting the stage over[/yellow]", soft_wrap=True)
        return None
    if found is not None:
        console.print(f"stage {stage_dir.name}: continuing from {found}", soft_wrap=True)
    return str(found) if found is not None else None


def run_sample_stage(config: dict[str, Any], out: Path, stage_dir: Path, base: Path | None = None) -> dict[str, Any]:
    """Rejection-sample with the stage's model into ``stage_dir/samples.jsonl``."""
    from aha.models.loading import load_recipe_model
    from aha.rollout.engine import LocalEngine
    from aha.workflows.sampling import resumable, run_sample

    cfg = _sample_config(config, base)
    model, tok = load_recipe_model(_concrete(config["model"], out, None, None), cfg.seed)
    stage_dir.mkdir(parents=True, exist_ok=True)
    engine = LocalEngine(model, tok, batch_size=cfg.batch_size)
    out_file = stage_dir / "samples.jsonl"
    resume = resumable(out_file, config["dataset"], cfg)  # an interrupted attempt with these settings
    summary = run_sample(engine, config["dataset"], out_file, cfg, overwrite=not resume, resume=resume)
    if not summary["kept"]:
        raise ValueError(f"stage {stage_dir.name}: no completion was accepted: nothing to fine-tune on")
    (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _may_continue(stage: Stage, stage_dir: Path) -> bool:
    """Whether an unfinished stage's directory holds what it may continue from (the stage checks the settings):
    a training stage's run directory, a sample stage's progress."""
    from aha.workflows.sampling import partial_paths

    if stage.kind == "sample":
        return partial_paths(stage_dir / "samples.jsonl")[2].is_file()
    return (stage_dir / "config.yaml").is_file()


HELD_OUT = ("accuracy", "pass1", "format", "length")  # a training stage's summary.json <key>_after (workflows.run)
TOOL_HELD_OUT = ("tool_use", "tool_use_sampled")  # with tools: the share of greedy / sampled completions calling one


def held_out_keys(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """HELD_OUT, plus the tool-use rate where a stage measured it."""
    return HELD_OUT + tuple(k for k in TOOL_HELD_OUT if any(r.get(k) is not None for r in rows))


def _row(stage: Stage, summary: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage.dirname, "kind": stage.kind, "seconds": summary.get("seconds")}
    if stage.kind == "sample":
        row |= {"kept": summary["kept"], "mean_pass_rate": summary["mean_pass_rate"]}
        for k in HELD_OUT + TOOL_HELD_OUT:  # the model is unchanged
            if (previous or {}).get(k) is not None or k in HELD_OUT:
                row[k] = (previous or {}).get(k)
    else:
        row |= {k: summary.get(f"{k}_after") for k in HELD_OUT}
        row |= {k: summary[f"{k}_after"] for k in TOOL_HELD_OUT if f"{k}_after" in summary}
        row |= {k: summary[k] for k in ("steps", "reward", "loss") if k in summary}
    return row


def before_after(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``<metric>_before`` / ``_after`` for each HELD_OUT metric: the first held-out evaluation (the starting
    model's, or the first evaluated stage's) against the last; empty when fewer than two stages were evaluated."""
    evaluated = [r for r in rows if r.get("kind") != "sample" and r.get("accuracy") is not None]
    if len(evaluated) < 2:
        return {}
    first, last = evaluated[0], evaluated[-1]
    return {f"{k}_{when}": r.get(k) for k in held_out_keys(rows) for when, r in (("before", first), ("after", last))}


# what a pipeline writes: its recipe, the stage directories <i>-<name>/, their recipes, the summary (and the demo's
# plots/)
PIPELINE_DIR = OutputKind(
    "a pipeline directory",
    writes=(
        PIPELINE_MARKER,
        "summary.json",
        "recipes",
        "plots",
        "[0-9]*-*",
        f".{PIPELINE_MARKER}.tmp",
        ".summary.json.tmp",
    ),
    resumes=True,
)


def prepare_out(out: Path, raw: dict[str, Any], overwrite: bool) -> None:
    from aha.workflows.rundir import prepare_output

    prepare_output(out, PIPELINE_DIR, overwrite)
    _write_atomic(out / PIPELINE_MARKER, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from aha.console import console

    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    columns = ("stage", "kind", *held_out_keys(rows), "seconds")
    table = Table(title="held-out accuracy after each stage")
    for col in columns:
        table.add_column(col, justify="left" if col in ("stage", "kind") else "right")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in columns))
    console.print(table)


def run_pipeline(
    path: str | Path, sets: list[str] = (), out: str | None = None, plot: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Run (or resume) every stage of the pipeline; writes and returns ``DIR/summary.json``."""
    from aha.console import console

    raw = read_pipeline(path, sets)
    base = Path(path).resolve().parent  # relative reward files are the pipeline file's neighbours
    stages = build_stages(raw, base)
    run_dir = Path(out or f"runs/{Path(path).stem}")
    validate(raw, stages, run_dir, base)
    prepare_out(run_dir, raw, overwrite)
    rows: list[dict[str, Any]] = []
    try:
        for st, config in zip(stages, plan(raw, stages)):
            stage_dir = run_dir / st.dirname
            done = stage_dir / STAGE_DONE
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
            if stage_dir.exists() and not _may_continue(st, stage_dir):
                shutil.rmtree(stage_dir)  # an unfinished stage with nothing to continue from starts over
            console.rule(f"stage {st.dirname} ({st.kind})")
            new: list[dict[str, Any]] = []
            if st.kind == "sample":
                summary = run_sample_stage(config, run_dir, stage_dir, base)
            else:
                summary = run_training_stage(config, run_dir, stage_dir, plot, base)
                if not rows and summary.get("accuracy_before") is not None:  # the starting model's accuracy
                    start = {k: summary.get(f"{k}_before") for k in HELD_OUT}
                    start |= {k: summary[f"{k}_before"] for k in TOOL_HELD_OUT if f"{k}_before" in summary}
                    new.append({"stage": "0-start", "kind": "-", **start})
            new.append(_row(st, summary, (rows + new)[-1] if rows + new else None))
            rows += new
            _write_atomic(done, json.dumps({"config": config, "rows": new}, indent=2, default=str) + "\n")
            _write_atomic(run_dir / "summary.json", json.dumps({"stages": rows}, indent=2) + "\n")
    finally:
        record_output(run_dir)
    result = {"pipeline": str(path), "out": str(run_dir), "stages": rows, **before_after(rows)}
    result["seconds"] = round(sum(r.get("seconds") or 0.0 for r in rows), 1)
    _write_atomic(run_dir / "summary.json", json.dumps(result, indent=2) + "\n")
    print_table(rows)
    return result


def dry_run_report(path: str | Path, sets: list[str] = (), out: str | None = None) -> str:
    """Every stage's resolved settings as YAML, then what was checked, as comments."""
    raw = read_pipeline(path, sets)
    base = Path(path).resolve().parent
    stages = build_stages(raw, base)
    run_dir = Path(out or f"runs/{Path(path).stem}")
    notes = validate(raw, stages, run_dir, base)
    configs = plan(raw, stages)
    resolved = {"out": str(run_dir), "stages": [{"stage": s.dirname, **c} for s, c in zip(stages, configs)]}
    text = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=100)
    lines = ["# --dry-run: pipeline is valid; nothing was trained", "# @<stage>: that stage's model or samples"]
    return text + "\n".join([*lines, *(f"# {n}" for n in notes)]) + "\n"
