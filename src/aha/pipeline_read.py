"""Reading a pipeline recipe (see :mod:`aha.pipeline`): the YAML, its ``--set`` assignments (``stages.<name>.<key>``
or top-level keys), and the list of stages they describe."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aha.recipe import read_recipe
from aha.recipe_set import TOP_KEYS, _suggest, apply_set, config_fields, parse_value
from aha.sample import SampleConfig

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
        raise ValueError(f"no stage {seg!r}{_suggest(seg, [n for n in names if n])}; use its name, index or *")
    return [stages[names.index(seg)]]


def _set_sample(stage: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    key = path[0]
    if key not in SAMPLE_KEYS:
        raise ValueError(f"a sample stage has no key {key!r}{_suggest(key, SAMPLE_KEYS)}")
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


def apply_pipeline_set(raw: dict[str, Any], assignment: str) -> None:
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
                raise ValueError(f"--set {key}: no trainer has the field {path[1]!r}{_suggest(path[1], fields)}")
            raw.setdefault("training", {})[path[1]] = parse_value(text)
            return
        apply_set(raw, assignment, "grpo")
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
                apply_set(view, f"{'.'.join(rest)}={text}", stage.get("kind", "grpo"))
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
        apply_pipeline_set(raw, s)
    for key in raw:
        if key not in (*TOP_KEYS, "stages") or key == "trainer":
            raise ValueError(f"{path}: unknown pipeline key {key!r}{_suggest(key, (*TOP_KEYS, 'stages'))}")
    return raw


def build_stages(raw: dict[str, Any]) -> list[Stage]:
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
                apply_set(stage.raw, str(assignment), kind)
        if kind == "sample":
            for k in stage.raw:
                if k not in SAMPLE_KEYS:
                    raise ValueError(f"stage {name}: a sample stage has no key {k!r}{_suggest(k, SAMPLE_KEYS)}")
            if "dataset" not in stage.raw:
                raise ValueError(f"stage {name}: a sample stage needs a dataset (the prompts to sample)")
        out.append(stage)
    return out
