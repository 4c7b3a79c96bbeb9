"""Recipes: one YAML file holds everything a training run needs; ``aha train`` / ``aha sft`` run it.

Top-level keys (anything else is an error with a suggestion)::

    trainer: grpo            # optional: grpo (aha train) or sft (aha sft); a mismatch is an error
    model: HuggingFaceTB/SmolLM2-135M-Instruct   # Hub id, model/run/adapter directory, `tiny` or {tiny: {sizes}}
    dataset: {path: openai/gsm8k, name: main, ...}   # an aha.data.load.load_rows spec (Hub, local files, task)
    rewards: [correctness, {name: length, ideal_length: 50, weight: 0.5}, my_rewards.py:brevity]   # GRPO only;
                             # a relative reward file is read from the recipe's directory
    peft: {r: 16, lora_alpha: 32, lora_dropout: 0.05, target_modules: all-linear}   # optional LoRA
    merge_lora: false        # also save the adapter merged into the base (RUN/merged/)
    eval: {dataset: {task: arithmetic, split: eval, n: 100}, samples: 4}   # optional held-out evaluation
    tools: [calculator]      # tools the model may call: built-in (calculator, python) or file.py:fn (SFT renders
                             # them into the prompts; GRPO runs them in multi-turn rollouts; eval too)
    training: {learning_rate: 1.0e-5, ...}   # GRPOConfig fields (aha train) or SFTConfig fields (aha sft)

An Open R1 / ``trl grpo --config`` file (flat, with ``model_name_or_path``) is read as the aha recipe it means
(:mod:`aha.workflows.openr1`); ``--set`` then overrides that recipe's keys. Training settings live under
``training:`` only. ``--set a.b=value`` overrides any key (values are YAML,
type-checked against the target, below). Validation never loads weights or Hub data: built-in
tasks and local files are read for real (so the columns the rewards need are checked), Hub data sets are
reported as not checkable.

``--set`` values are YAML (``1e-5`` → float, ``[a, b]`` → list, ``null`` → None), type-checked against the
target: ``training.*`` against the GRPOConfig/SFTConfig fields, ``dataset.*`` against the data spec keys and
the task's parameters, ``rewards.<name or index>.*`` against the reward's parameters, ``model.tiny.*``,
``peft.*`` and ``eval.*`` against their options. Unknown keys are ValueErrors with a "did you mean".
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aha.data.load import spec_name
from aha.settings import coerce, field_types, from_dict, suggest, type_ok
from aha.train.config import GRPOConfig
from aha.workflows.openr1 import ORIGIN, is_openr1_config, translate

TOP_KEYS = ("trainer", "model", "dataset", "rewards", "peft", "merge_lora", "eval", "training", "tools")
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


def config_class(kind: str) -> type:
    from aha.train.sft import SFTConfig

    return GRPOConfig if kind == "grpo" else SFTConfig


def config_fields(kind: str) -> dict[str, str]:
    """Field name → annotation of the trainer's config."""
    return field_types(config_class(kind))


def tiny_fields() -> dict[str, str]:
    """Option name → annotation of aha's tiny model (``model: {tiny: {...}}``)."""
    from aha.models.tiny import TinyConfig

    return field_types(TinyConfig)


# ------------------------------------------------------------------------------------------ --set
def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (``1e-5`` → float, ``[a, b]`` → list, ``null`` → None); raw text if not YAML."""
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def yaml_problem(text: str) -> str | None:
    """Why `text` is not valid YAML (the problem and where), or None when it is."""
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        return problem + (f" (column {mark.column + 1})" if mark is not None else "")
    return None


def _task_params(name: Any) -> dict[str, Any]:
    from aha.tasks import task_class

    cls = task_class(name) if isinstance(name, str) else None
    if cls is None:
        return {}
    sig = inspect.signature(cls.__init__)
    params = list(sig.parameters.values())[1:]
    params = [p for p in params if p.name != "task"]  # a reasoning-gym task's name is the spec's task
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _dataset_key_type(spec: dict[str, Any], key: str) -> str | None:
    from aha.data.load import FILE_KEYS, TASK_KEYS

    types = {"n": "int", "seed": "int", "max_samples": "int | None", "shuffle_seed": "int | None", "task": "str"}
    types |= {"max_prompt_length": "int | None", "system_prompt": "str | None", "split": "str", "params": "dict"}
    types["few_shot"] = "any"
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
    raise ValueError(f"no reward {seg!r} in the recipe{suggest(seg, [n for n in names if n])}; use its index")


def apply_set(recipe: dict[str, Any], assignment: str, kind: str, base: Path | None = None) -> None:
    """Apply one ``--set dotted.key=value`` in place; unknown keys and wrongly typed values are ValueErrors.
    `base`: the recipe's directory (where a relative custom reward file is)."""
    key, eq, text = assignment.partition("=")
    if not eq or not key.strip():
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. training.learning_rate=1e-5")
    path, value = key.strip().split("."), parse_value(text)
    try:
        _apply(recipe, path, value, text, kind, yaml_problem(text), base)
    except ValueError as e:
        raise ValueError(f"--set {key.strip()}: {e}") from None


def _apply(
    recipe: dict[str, Any], path: list[str], value: Any, text: str, kind: str, problem: str | None, base: Path | None
) -> None:
    """`problem`: why `text` is not valid YAML (None: it is); the raw text is then the value where text goes."""
    top, rest = path[0], path[1:]

    def syntax_error() -> ValueError:
        return ValueError(f"YAML syntax error in the value {text!r}: {problem}")

    def typed(v: Any, annotation: str, what: str) -> Any:
        flow = text.lstrip().startswith(("{", "[")) and ("list" in annotation or "dict" in annotation)
        if problem is not None and flow:
            raise syntax_error()  # a broken list or mapping where one is expected, not text
        v = coerce(v, annotation)
        if not type_ok(v, annotation) and "str" in annotation and not isinstance(v, str):
            v = text  # e.g. a system prompt with a colon in it parses as a YAML mapping
        if not type_ok(v, annotation):
            if problem is not None:
                raise syntax_error()
            raise ValueError(f"{what} must be {annotation}, got {type(v).__name__} ({v!r})")
        return v

    if problem is not None and top in ("rewards", "model") and text.lstrip().startswith(("{", "[")):
        raise syntax_error()  # a broken mapping or list, where a name would otherwise be taken as it is

    if top not in TOP_KEYS:
        raise ValueError(f"unknown recipe key {top!r}{suggest(top, TOP_KEYS)}; keys: {', '.join(TOP_KEYS)}")
    if not rest:
        expect = {"trainer": "str", "merge_lora": "bool", "rewards": "list[str] | None", "model": "str"}
        expect["tools"] = "list[str] | None"
        if top in ("dataset", "training") or (top in ("peft", "eval") and value is not None):
            value = typed(value, "dict", top)
        elif top == "model" and not isinstance(value, dict):
            value = typed(value, "str", top)
        elif top in ("trainer", "merge_lora", "tools") or (top == "rewards" and not isinstance(value, list)):
            value = typed(value, expect[top], top)
            if top == "tools":
                resolve_tools(value, base)  # unknown names: the known ones
        recipe[top] = value
        return
    section = recipe.get(top)
    if top == "training":
        fields = config_fields(kind)
        if len(rest) != 1 or rest[0] not in fields:
            name = config_class(kind).__name__
            raise ValueError(f"{name} has no field {'.'.join(rest)!r}{suggest(rest[0], fields)}")
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
            raise ValueError(f"unknown dataset key {k!r}{suggest(k, known + ['system_prompt', 'max_samples'])}")
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
            raise ValueError(f"tiny model has no option {rest[1]!r}{suggest(rest[1], sizes)}")
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
            _check_reward_params(entry, base)
            rewards[i] = entry
        recipe["rewards"] = rewards
    elif top == "peft":
        from peft import LoraConfig

        known = {f.name for f in dataclasses.fields(LoraConfig)}
        if len(rest) != 1 or rest[0] not in known:
            raise ValueError(f"LoraConfig has no field {'.'.join(rest)!r}{suggest(rest[0], PEFT_TYPES)}")
        v = typed(value, PEFT_TYPES[rest[0]], f"peft.{rest[0]}") if rest[0] in PEFT_TYPES else value
        recipe["peft"] = {**(section or {}), rest[0]: v}
    elif top == "eval":
        ev = dict(section or {})
        if rest[0] not in EVAL_TYPES:
            raise ValueError(f"unknown eval key {rest[0]!r}{suggest(rest[0], EVAL_TYPES)}")
        if rest[0] == "dataset" and len(rest) == 2:
            sub: dict[str, Any] = {"dataset": dict(ev.get("dataset") or {})}
            _apply(sub, ["dataset", rest[1]], value, text, kind, problem, base)
            ev["dataset"] = sub["dataset"]
        else:
            ev[rest[0]] = typed(value, EVAL_TYPES[rest[0]], f"eval.{rest[0]}")
        recipe["eval"] = ev
    else:
        raise ValueError(f"{top} has no sub-keys")


def _check_reward_params(entry: dict[str, Any], base: Path | None) -> None:
    from aha.rewards import resolve

    resolve(entry, base)  # unknown names, unknown parameters and wrong types are ValueErrors naming them


NOT_COLUMNS = {"prompts", "completions", "completion_ids", "kwargs", "trainer_state", "self"}


# ------------------------------------------------------------------------------------------ reading
def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe mapping; missing file → FileNotFoundError, bad YAML → ValueError with its line."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{path} is a directory, not a recipe file (a YAML file, e.g. recipes/demo-grpo.yaml)")
    if not p.is_file():
        raise FileNotFoundError(f"recipe file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{p}: not a recipe: not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); a recipe is a YAML file"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        raise ValueError(f"{p}: the recipe is empty")
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a recipe must be a mapping of keys (model, dataset, ...), got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------ rewards
@dataclass
class RewardEntry:
    name: str
    fn: Any
    weight: float
    params: dict[str, Any]
    needs: list[tuple[str, ...]]  # each: alternative column names, one of which the dataset must have


def needed_columns(fn: Any, params: dict[str, Any]) -> list[tuple[str, ...]]:
    """Dataset columns a reward needs, from its signature: parameters without a default other than prompts,
    completions, completion_ids and kwargs; a ``gold_column`` parameter needs that column (or ``answer``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    out: list[tuple[str, ...]] = []
    for p in sig.parameters.values():
        if p.name == "gold_column" and isinstance(params.get("gold_column", p.default), str):
            gold = params.get("gold_column", p.default)
            out.append((gold,) if gold == "answer" else (gold, "answer"))
        elif p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in NOT_COLUMNS or p.name in params:
            continue
        elif p.default is p.empty:
            out.append((p.name,))
    return out


def resolve_rewards(specs: Any, base: Path | None = None) -> list[RewardEntry]:
    """The recipe's rewards; a relative custom reward file is read from `base` (the recipe's directory)."""
    from aha.rewards import REGISTRY, resolve

    if not isinstance(specs, list) or not specs:
        raise ValueError("rewards: a GRPO recipe needs a non-empty list of rewards (names, dicts or module:function)")
    out = []
    for spec in specs:
        fn, weight = resolve(spec, base)
        name = spec if isinstance(spec, str) else spec["name"]
        params = {k: v for k, v in spec.items() if k not in ("name", "weight")} if isinstance(spec, dict) else {}
        shown = {**REGISTRY[name].params(), **params} if name in REGISTRY else params
        out.append(RewardEntry(name, fn, weight, shown, needed_columns(fn, params)))
    return out


def check_columns(rewards: list[RewardEntry], columns: set[str], where: str) -> None:
    """A ValueError naming the reward and the column when the dataset lacks one a reward needs."""
    have = ", ".join(sorted(columns)) or "(none)"
    columns = columns - {"prompt", "completion"}  # the trainer passes every other column to the rewards
    for r in rewards:
        clash = sorted(columns & set(r.params))
        if clash:
            raise ValueError(
                f"reward {r.name!r}: {where} has a column {clash[0]!r}, the name of one of its parameters; the "
                "trainer passes columns as keyword arguments, so it would override the parameter: use another dataset"
            )
        for alternatives in r.needs:
            if not any(c in columns for c in alternatives):
                col = " or ".join(repr(c) for c in alternatives)
                raise ValueError(f"reward {r.name!r} needs the dataset column {col}, which {where} lacks (has: {have})")


# ------------------------------------------------------------------------------------------ tools
def resolve_tools(names: Any, base: Path | None = None) -> list[Any]:
    """The functions of a recipe's ``tools:``: built-in names (``aha.tools.BUILTIN_TOOLS``) or ``file.py:fn`` /
    ``module:fn`` (a relative file read from `base`, the recipe's directory); None: none."""
    from aha.tools import resolve_tools as resolve

    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"tools: expected a list of tool names, e.g. [calculator], got {names!r}")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"tools: {name!r} is listed twice")
    try:
        return resolve(names, base)
    except ValueError as e:
        raise ValueError(f"tools: {e}") from None


# ------------------------------------------------------------------------------------------ the recipe
@dataclass
class Recipe:
    """A validated recipe: everything resolved except the weights and Hub data."""

    kind: str
    source: str
    model: str | dict[str, Any]
    dataset: dict[str, Any]
    config: Any  # GRPOConfig or SFTConfig
    output_dir: str
    rewards: list[RewardEntry] = field(default_factory=list)
    peft: dict[str, Any] | None = None
    merge_lora: bool = False
    eval: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    translated: dict[str, Any] | None = None  # an Open R1/TRL config's aha recipe (after --set), as written
    tools: list[str] = field(default_factory=list)  # tool names / file.py:fn (tool_functions() resolves them)
    base: Path | None = None  # where relative files (rewards, tools) are read from: the recipe's directory

    def tool_functions(self) -> list[Any]:
        return resolve_tools(self.tools, self.base)

    def lora_config(self) -> Any:
        from peft import LoraConfig

        return None if self.peft is None else LoraConfig(task_type="CAUSAL_LM", **self.peft)

    def resolved(self) -> dict[str, Any]:
        """The settings as run: what ``--dry-run`` prints and ``RUN/config.yaml`` holds."""
        out: dict[str, Any] = {"trainer": self.kind, "model": self.model, "dataset": self.dataset}
        if self.kind == "grpo":
            out["rewards"] = [{"name": r.name, "weight": r.weight, **r.params} for r in self.rewards]
        out |= {"peft": self.peft, "merge_lora": self.merge_lora, "eval": self.eval}
        if self.tools:
            out["tools"] = list(self.tools)
        training = dataclasses.asdict(self.config)
        out["training"] = {"output_dir": self.output_dir, **training}
        return out


def _normalise_model(model: Any, notes: list[str]) -> tuple[str | dict[str, Any], Any]:
    """(model spec, a local tokenizer or None). Never loads weights nor contacts the Hub."""
    from aha.models.loading import load_tokenizer, looks_local, resolve_model_path
    from aha.models.tiny import TinyConfig, build_tokenizer

    if model == "tiny" or (isinstance(model, dict) and set(model) == {"tiny"}):
        sizes = (model["tiny"] if isinstance(model, dict) else None) or {}
        if not isinstance(sizes, dict):
            raise ValueError(f"model: tiny takes a mapping of sizes, got {sizes!r}")
        known = tiny_fields()
        for k, v in sizes.items():
            if k not in known:
                raise ValueError(f"model: tiny model has no option {k!r}{suggest(k, known)}")
            if not type_ok(v, known[k]):
                raise ValueError(f"model: tiny.{k} must be {known[k]}, got {v!r}")
        TinyConfig(**sizes)
        notes.append("model: aha's tiny model, built fresh (untrained unless you start from a run directory)")
        return {"tiny": dict(sizes)}, build_tokenizer()
    if isinstance(model, dict):
        raise ValueError(f"model: expected a Hub id, a directory, 'tiny' or {{tiny: {{...}}}}, got {model!r}")
    if not isinstance(model, str) or not model:
        raise ValueError("model: the recipe needs a model (Hub id, model/run directory, or tiny)")
    if looks_local(model):
        path = resolve_model_path(model)
        return path, load_tokenizer(path)
    notes.append(f"model: {model!r} is a Hub id: not downloaded by --dry-run (loaded when training)")
    return model, None


def probe_dataset(spec: Any, tokenizer: Any, label: str, notes: list[str]) -> set[str] | None:
    """The columns the rows of `spec` will have (rows read for tasks and local files), or None for Hub data."""
    from aha.data.load import is_local, load_rows

    if not isinstance(spec, dict):
        raise ValueError(f"{label}: a dataset spec must be a mapping (e.g. {{task: arithmetic}}), got {spec!r}")
    if "path" in spec and "task" not in spec and not is_local(str(spec["path"])):
        known = {"prompt"} | ({"answer"} if spec.get("answer_column") else set())
        notes.append(
            f"{label}: {spec['path']!r} is a Hub dataset: not downloaded by --dry-run, so its columns cannot be "
            f"checked here (known: {', '.join(sorted(known))}); the rest are checked when training"
        )
        return None
    path = Path(str(spec.get("path", ""))).expanduser()
    if "task" not in spec and path.is_file() and not path.read_bytes().strip():
        raise ValueError(f"{label}: {str(path)!r} is empty: no rows to train on")
    probe = dict(spec)
    if probe.get("max_prompt_length") is not None and tokenizer is None:
        probe.pop("max_prompt_length")
        notes.append(f"{label}: max_prompt_length not checked (the model's tokenizer is on the Hub)")
    if "task" in probe:
        probe["n"] = min(int(probe.get("n", 1000)) if isinstance(probe.get("n", 1000), int) else 1, 1000)
    rows = load_rows(probe, tokenizer)
    where = f"task {spec['task']!r}" if "task" in spec else repr(spec["path"])
    notes.append(f"{label}: {where}: {len(rows)} rows checked, columns {', '.join(sorted(rows[0]))}")
    return set(rows[0])


def load_recipe(
    path: str | Path,
    sets: list[str] = (),
    kind: str = "grpo",
    out: str | None = None,
    merge: bool = False,
    base: str | Path | None = None,
) -> Recipe:
    """Read, override (``--set``) and validate a recipe. Errors are one-line ValueErrors/FileNotFoundErrors.
    A relative custom reward file (``rewards: [my_rewards.py:fn]``) is read from `base`, by default the recipe's
    directory."""
    raw = read_recipe(path)
    where = Path(base) if base is not None else Path(path).resolve().parent
    src = str(path)
    translated: list[str] | None = None
    if is_openr1_config(raw):  # an Open R1 / `trl grpo` config: the aha recipe it means (aha.workflows.openr1)
        translation = translate(raw, src, kind)
        raw, translated = translation.recipe, translation.notes
    for s in sets:
        apply_set(raw, s, kind, where)
    for key in raw:
        if key not in TOP_KEYS:
            raise ValueError(f"{src}: unknown recipe key {key!r}{suggest(key, TOP_KEYS)}; keys: {', '.join(TOP_KEYS)}")
    trainer = raw.get("trainer", kind)
    if trainer != kind:
        other = {"grpo": "aha train", "sft": "aha sft"}.get(str(trainer))
        hint = f"; run it with `{other}`" if other else ""
        raise ValueError(f"{src}: this recipe is for trainer {trainer!r}, not {kind!r}{hint}")
    notes: list[str] = []
    model, tok = _normalise_model(raw.get("model"), notes)

    training = dict(raw.get("training") or {})
    fields = config_fields(kind)
    for k, v in list(training.items()):
        if k in fields:
            training[k] = coerce(v, fields[k])
    output_dir = str(out or training.pop("output_dir", None) or f"runs/{kind}")
    training.pop("output_dir", None)
    rewards: list[RewardEntry] = []
    if kind == "grpo":
        rewards = resolve_rewards(raw.get("rewards"), where)
        weights = [r.weight for r in rewards]
        if any(w != 1.0 for w in weights):
            if training.get("reward_weights") is not None:
                raise ValueError("give reward weights either in rewards (weight: ...) or training.reward_weights")
            training["reward_weights"] = weights
        training["output_dir"] = output_dir
        config = GRPOConfig.from_dict(training)
    else:
        if raw.get("rewards"):
            raise ValueError(f"{src}: an SFT recipe takes no rewards (SFT learns from the completion column)")
        training["output_dir"] = output_dir
        config = _sft_config(training)

    peft = raw.get("peft")
    if peft is not None:
        if not isinstance(peft, dict):
            raise ValueError(f"peft: expected a mapping like {{r: 16, lora_alpha: 32}}, got {peft!r}")
        for k, v in peft.items():
            if k in PEFT_TYPES and not type_ok(v, PEFT_TYPES[k]):
                raise ValueError(f"peft: {k} must be {PEFT_TYPES[k]}, got {v!r}")
    merge_lora = bool(merge or raw.get("merge_lora", False))
    if merge_lora and peft is None:
        raise ValueError("merge_lora needs a LoRA run (a `peft:` section)")
    recipe = Recipe(kind, src, model, raw.get("dataset"), config, output_dir, rewards, peft, merge_lora, None, notes)
    recipe.base = where
    recipe.tools = _check_tools(raw.get("tools"), kind, where, notes)
    if translated is not None:
        recipe.translated = copy.deepcopy(raw)
        notes[:0] = translated
    if peft is not None:
        try:
            recipe.lora_config()
        except (TypeError, ValueError) as e:
            raise ValueError(f"peft: {e}") from None

    columns = probe_dataset(recipe.dataset, tok, "dataset", notes)
    _task_tools_note(recipe.dataset, recipe.tools, notes)
    needs = [("prompt",), ("completion",)] if kind == "sft" else []
    if columns is not None:
        check_columns(rewards, columns, spec_name(recipe.dataset))
        missing = [n[0] for n in needs if n[0] not in columns]
        if missing:
            raise ValueError(f"SFT needs the dataset column {missing[0]!r}, which {spec_name(recipe.dataset)} lacks")
    elif kind == "sft":
        notes.append("dataset: the prompt and completion columns SFT needs are checked when training")
    recipe.eval = _check_eval(raw.get("eval"), tok, notes)
    for r in rewards:
        needs_text = ", ".join(" or ".join(n) for n in r.needs) or "no dataset column"
        notes.append(f"reward {r.name} (weight {r.weight:g}) needs {needs_text}")
    return recipe


def _check_tools(tools: Any, kind: str, base: Path, notes: list[str]) -> list[str]:
    """The recipe's tools, checked (each resolves to a function with a schema)."""
    resolve_tools(tools, base)
    if not tools:
        return []
    what = "rendered into every prompt" if kind == "sft" else "called in multi-turn rollouts"
    notes.append(f"tools: {', '.join(tools)} ({what})")
    return list(tools)


def _task_tools_note(spec: Any, tools: list[str], notes: list[str]) -> None:
    """A note when the dataset is a task made for tools (its ``tools`` attribute) that the recipe does not give."""
    from aha.tasks import task_class

    cls = task_class(spec.get("task")) if isinstance(spec, dict) else None
    wanted = list(getattr(cls, "tools", ()) or ())
    if [t for t in wanted if t not in tools]:
        notes.append(
            f"dataset: task {spec['task']!r} is made for the tools {', '.join(wanted)}, which this recipe does not "
            f"give (tools: [{', '.join(wanted)}] renders them into the prompts)"
        )


def _sft_config(values: dict[str, Any]) -> Any:
    from aha.train.sft import SFTConfig

    return from_dict(SFTConfig, values)


def _check_eval(ev: Any, tok: Any, notes: list[str]) -> dict[str, Any] | None:
    if ev is None:
        return None
    if not isinstance(ev, dict) or not isinstance(ev.get("dataset"), dict):
        raise ValueError("eval: expected {dataset: {...a dataset spec...}, samples: 4, ...}")
    for k, v in ev.items():
        if k not in EVAL_TYPES:
            raise ValueError(f"eval: unknown key {k!r}{suggest(k, EVAL_TYPES)}")
        if not type_ok(coerce(v, EVAL_TYPES[k]), EVAL_TYPES[k]):
            raise ValueError(f"eval: {k} must be {EVAL_TYPES[k]}, got {v!r}")
    out = {"samples": 1, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": None, "batch_size": 64}
    out |= {"answer_format": None, "before": False, "seed": 0, **ev}
    spec = dict(ev["dataset"])
    if "task" in spec:
        spec.setdefault("split", "eval")  # a task's held-out split
    elif not spec.get("answer_column"):
        raise ValueError("eval: a file or Hub eval dataset needs answer_column (the ground truth)")
    out["dataset"] = spec
    columns = probe_dataset(spec, tok, "eval", notes)
    if columns is not None and "answer" not in columns:
        raise ValueError(f"eval: the eval {spec_name(spec)} has no answer column")
    return out


def dry_run_report(recipe: Recipe) -> str:
    """The resolved config as YAML, followed by what was (and was not) checked, as YAML comments."""
    lines = [f"# {n}" for n in recipe.notes]
    if recipe.translated is not None:  # the aha recipe to adopt, rather than every resolved default
        text = yaml.dump(recipe.translated, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)
        return (
            f"# {translated_line(recipe)}\n"
            + text
            + "\n".join(["# --dry-run: recipe is valid; nothing was trained", *lines])
            + "\n"
        )
    text = yaml.safe_dump(recipe.resolved(), sort_keys=False, allow_unicode=True, width=100)
    return text + "\n".join(["# --dry-run: recipe is valid; nothing was trained", *lines]) + "\n"


class _BlockDumper(yaml.SafeDumper):
    """safe_dump, with multi-line strings (system prompts) as ``|`` blocks: the text as the user wrote it."""


_BlockDumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def translated_line(recipe: Recipe) -> str:
    """The line saying a recipe file was read as an Open R1/TRL config."""
    return f"{recipe.source}: read as {ORIGIN}, translated to the aha recipe `aha train --dry-run` prints"
