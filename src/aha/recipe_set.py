"""The recipe's keys and the types they take, and ``--set dotted.key=value`` overrides checked against them.

``--set`` values are YAML (``1e-5`` → float, ``[a, b]`` → list, ``null`` → None), type-checked against the
target: ``training.*`` against the GRPOConfig/SFTConfig fields, ``dataset.*`` against the data spec keys and
the task's parameters, ``rewards.<name or index>.*`` against the reward's parameters, ``model.tiny.*``,
``peft.*`` and ``eval.*`` against their options. Unknown keys are ValueErrors with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from typing import Any

import yaml

from aha.train.config import GRPOConfig, _type_ok

TOP_KEYS = ("trainer", "model", "dataset", "rewards", "peft", "merge_lora", "eval", "training")
EVAL_TYPES = {
    "dataset": "dict",
    "samples": "int",
    "temperature": "float",
    "top_p": "float",
    "max_new_tokens": "int | None",
    "batch_size": "int",
    "answer_format": "str | None",
    "before": "bool",
    "seed": "int",
}
PEFT_TYPES = {"r": "int", "lora_alpha": "int | float", "lora_dropout": "float", "target_modules": "str | list[str]"}
FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_of(value: Any, annotation: str) -> bool:
    if annotation == "dict":
        return isinstance(value, dict)
    if annotation == "any":
        return True
    return _type_ok(value, annotation)


def _coerce(value: Any, annotation: str) -> Any:
    """YAML 1.1 reads ``1e-5`` as a string: make it a float where a float is expected."""
    if isinstance(value, str) and "float" in annotation and FLOAT_RE.fullmatch(value.strip()):
        return float(value)
    return value


def config_class(kind: str) -> type:
    from aha.train.sft import SFTConfig

    return GRPOConfig if kind == "grpo" else SFTConfig


def config_fields(kind: str) -> dict[str, str]:
    """Field name → annotation of the trainer's config (plus ``output_dir`` for SFT: the run directory)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(config_class(kind))}
    fields.setdefault("output_dir", "str")
    return fields


def tiny_fields() -> dict[str, str]:
    """Option name → annotation of aha's tiny model (``model: {tiny: {...}}``)."""
    from aha.models.tiny import TinyConfig

    return {f.name: str(f.type) for f in dataclasses.fields(TinyConfig)}


# ------------------------------------------------------------------------------------------ --set
def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (``1e-5`` → float, ``[a, b]`` → list, ``null`` → None); raw text if not YAML."""
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def _task_params(name: Any) -> dict[str, Any]:
    from aha.tasks import TASKS

    if name not in TASKS:
        return {}
    sig = inspect.signature(TASKS[name].__init__)
    params = list(sig.parameters.values())[1:]
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _dataset_key_type(spec: dict[str, Any], key: str) -> str | None:
    from aha.data.load import FILE_KEYS, TASK_KEYS

    types = {"n": "int", "seed": "int", "max_samples": "int | None", "shuffle_seed": "int | None", "task": "str"}
    types |= {"max_prompt_length": "int | None", "system_prompt": "str | None", "split": "str", "params": "dict"}
    if "task" in spec:
        params = _task_params(spec["task"])
        if key in params:
            d = params[key]
            return type(d).__name__ if isinstance(d, (bool, int, float, str)) else "any"
        return types.get(key, "str | None") if key in TASK_KEYS else None
    return types.get(key, "str | None") if key in FILE_KEYS else None


def _find_reward(rewards: list[Any], seg: str) -> int:
    if seg.lstrip("-").isdigit():
        i = int(seg)
        if not -len(rewards) <= i < len(rewards):
            raise ValueError(f"rewards has {len(rewards)} entries, no index {i}")
        return i % len(rewards)
    names = [r if isinstance(r, str) else r.get("name") if isinstance(r, dict) else None for r in rewards]
    if seg in names:
        return names.index(seg)
    raise ValueError(f"no reward {seg!r} in the recipe{_suggest(seg, [n for n in names if n])}; use its index")


def apply_set(recipe: dict[str, Any], assignment: str, kind: str) -> None:
    """Apply one ``--set dotted.key=value`` in place; unknown keys and wrongly typed values are ValueErrors."""
    key, eq, text = assignment.partition("=")
    if not eq or not key.strip():
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. training.learning_rate=1e-5")
    path, value = key.strip().split("."), parse_value(text)
    try:
        _apply(recipe, path, value, text, kind)
    except ValueError as e:
        raise ValueError(f"--set {key.strip()}: {e}") from None


def _apply(recipe: dict[str, Any], path: list[str], value: Any, text: str, kind: str) -> None:
    top, rest = path[0], path[1:]

    def typed(v: Any, annotation: str, what: str) -> Any:
        v = _coerce(v, annotation)
        if not _type_of(v, annotation) and "str" in annotation and not isinstance(v, str):
            v = text  # e.g. a system prompt with a colon in it parses as a YAML mapping
        if not _type_of(v, annotation):
            raise ValueError(f"{what} must be {annotation}, got {type(v).__name__} ({v!r})")
        return v

    if top not in TOP_KEYS:
        raise ValueError(f"unknown recipe key {top!r}{_suggest(top, TOP_KEYS)}; keys: {', '.join(TOP_KEYS)}")
    if not rest:
        expect = {"trainer": "str", "merge_lora": "bool", "rewards": "list[str] | None", "model": "str"}
        if top in ("dataset", "training") or (top in ("peft", "eval") and value is not None):
            value = typed(value, "dict", top)
        elif top == "model" and not isinstance(value, dict):
            value = typed(value, "str", top)
        elif top in ("trainer", "merge_lora") or (top == "rewards" and not isinstance(value, list)):
            value = typed(value, expect[top], top)
        recipe[top] = value
        return
    section = recipe.get(top)
    if top == "training":
        fields = config_fields(kind)
        if len(rest) != 1 or rest[0] not in fields:
            name = config_class(kind).__name__
            raise ValueError(f"{name} has no field {'.'.join(rest)!r}{_suggest(rest[0], fields)}")
        recipe.setdefault("training", {})[rest[0]] = typed(value, fields[rest[0]], f"{top}.{rest[0]}")
    elif top == "dataset":
        spec = dict(section or {})
        if len(rest) != 1:
            raise ValueError("dataset keys are one level deep (dataset.task=countdown, dataset.n=64)")
        k = rest[0]
        if k == "task":  # switching to a built-in task drops the file-only keys, and vice versa
            spec = {x: v for x, v in spec.items() if x not in ("path", "name", "prompt_column", "answer_column")}
            spec.pop("answer_format", None)
        elif k == "path":
            spec = {x: v for x, v in spec.items() if _dataset_key_type({}, x) is not None}
        annotation = _dataset_key_type({**spec, k: value} if k == "task" else spec, k)
        if annotation is None and "task" not in spec and "path" not in spec:
            raise ValueError(f"the dataset has no task or path yet: set dataset.task or dataset.path before {k!r}")
        if annotation is None:
            known = list(_task_params(spec["task"])) + ["n", "split", "seed"] if "task" in spec else ["path", "split"]
            raise ValueError(f"unknown dataset key {k!r}{_suggest(k, known + ['system_prompt', 'max_samples'])}")
        spec[k] = typed(value, annotation, f"dataset.{k}")
        if k == "task":
            from aha.tasks import get_task

            get_task(str(value))  # unknown task → its error, with suggestions
        recipe["dataset"] = spec
    elif top == "model":
        if rest[0] != "tiny" or len(rest) != 2:
            raise ValueError("only the tiny model has sub-keys (model.tiny.hidden_size=64)")
        sizes = tiny_fields()
        if rest[1] not in sizes:
            raise ValueError(f"tiny model has no option {rest[1]!r}{_suggest(rest[1], sizes)}")
        model = section if isinstance(section, dict) else {"tiny": {}}
        model.setdefault("tiny", {})
        model["tiny"] = {**(model["tiny"] or {}), rest[1]: typed(value, sizes[rest[1]], f"model.tiny.{rest[1]}")}
        recipe["model"] = model
    elif top == "rewards":
        rewards = list(section or [])
        i = _find_reward(rewards, rest[0])
        if len(rest) == 1:
            rewards[i] = value
        else:
            entry = rewards[i] if isinstance(rewards[i], dict) else {"name": rewards[i]}
            entry = {**entry, rest[1]: value}
            _check_reward_params(entry)
            rewards[i] = entry
        recipe["rewards"] = rewards
    elif top == "peft":
        from peft import LoraConfig

        known = {f.name for f in dataclasses.fields(LoraConfig)}
        if len(rest) != 1 or rest[0] not in known:
            raise ValueError(f"LoraConfig has no field {'.'.join(rest)!r}{_suggest(rest[0], PEFT_TYPES)}")
        v = typed(value, PEFT_TYPES[rest[0]], f"peft.{rest[0]}") if rest[0] in PEFT_TYPES else value
        recipe["peft"] = {**(section or {}), rest[0]: v}
    elif top == "eval":
        ev = dict(section or {})
        if rest[0] not in EVAL_TYPES:
            raise ValueError(f"unknown eval key {rest[0]!r}{_suggest(rest[0], EVAL_TYPES)}")
        if rest[0] == "dataset" and len(rest) == 2:
            sub: dict[str, Any] = {"dataset": dict(ev.get("dataset") or {})}
            _apply(sub, ["dataset", rest[1]], value, text, kind)
            ev["dataset"] = sub["dataset"]
        else:
            ev[rest[0]] = typed(value, EVAL_TYPES[rest[0]], f"eval.{rest[0]}")
        recipe["eval"] = ev
    else:
        raise ValueError(f"{top} has no sub-keys")


def _check_reward_params(entry: dict[str, Any]) -> None:
    from aha.rewards import resolve

    resolve(entry)  # unknown names, unknown parameters and wrong types are ValueErrors naming them
