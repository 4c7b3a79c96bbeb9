"""Open R1 and TRL GRPO config files, read as they are: translated into an aha recipe.

Open R1's ``recipes/<model>/grpo/config_*.yaml`` and TRL's ``trl grpo --config file.yaml`` files are flat: TRL's
ScriptArguments (``dataset_name``, ``dataset_config``, ``dataset_train_split``, ...), ModelConfig
(``model_name_or_path``, ``torch_dtype``, ``use_peft``, ``lora_r``, ...) and GRPOConfig fields side by side, plus
Open R1's own (``dataset_prompt_column``, ``system_prompt``, ``reward_funcs``, the reward parameters such as
``cosine_max_len``). A recipe with ``model_name_or_path`` at the top and no aha ``model:``/``training:`` section is
one of those (:func:`is_openr1_config`); :func:`translate` turns it into an aha recipe:

* model: ``model_name_or_path`` (a Hub id, a local directory, or aha's ``tiny``); ``torch_dtype``/``dtype``
  bfloat16/float16 set ``bf16``/``fp16`` (aha keeps float32 master weights and computes in that dtype);
* dataset: ``dataset_name`` (a Hub id, local files, or the name of a built-in aha task such as ``arithmetic``)
  with ``dataset_config``, ``dataset_train_split``, ``dataset_prompt_column`` and ``system_prompt``;
* rewards: ``reward_funcs`` and ``reward_weights``, Open R1's names (and ``trl grpo``'s) mapped by :data:`REWARDS`
  onto aha's rewards with Open R1's parameter fields and defaults (``cosine_min_value_wrong`` defaults to 0.0 there);
* peft: ``use_peft`` with ``lora_r``/``lora_alpha``/``lora_dropout``/``lora_target_modules`` (TRL's defaults);
* training: every other key, as a GRPOConfig field (a field aha lacks is GRPOConfig's unknown-field error).

Keys with no aha counterpart are refused with what to do instead (:data:`REFUSED`), unless they hold the value
that changes nothing; a few that only pick infrastructure (the attention kernel, Open R1's code-execution
provider) are not carried, each with a note saying so (:data:`NOT_CARRIED`).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any

from aha.settings import field_types
from aha.train.config import GRPOConfig

ORIGIN = "an Open R1 / TRL GRPO config"


@dataclass(frozen=True)
class RewardMap:
    """An Open R1 (or ``trl grpo``) reward name in aha: the aha reward, parameters it always gets, and the config
    keys that set its parameters (key → (aha parameter, Open R1's default))."""

    aha: str
    fixed: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, tuple[str, Any]] = field(default_factory=dict)
    differs: str = ""  # how aha's reward differs from Open R1's (a dry-run note)


COSINE_KEYS = {
    "cosine_min_value_wrong": ("min_value_wrong", 0.0),
    "cosine_max_value_wrong": ("max_value_wrong", -0.5),
    "cosine_min_value_correct": ("min_value_correct", 0.5),
    "cosine_max_value_correct": ("max_value_correct", 1.0),
    "cosine_max_len": ("max_len", 1000),
}
REWARDS: dict[str, RewardMap] = {
    "accuracy": RewardMap("accuracy", differs="a gold solution math-verify cannot parse scores None, not 1.0"),
    "format": RewardMap("format", differs="any whitespace between the blocks, where Open R1 wants newlines"),
    "tag_count": RewardMap("tag_count", differs="counts the bare tags, where Open R1 counts them with newlines"),
    "reasoning_steps": RewardMap("reasoning_steps", differs="numbered lines and bullets count on every line"),
    "cosine": RewardMap(  # Open R1 measures len(text)
        "cosine", {"unit": "characters"}, COSINE_KEYS, "the length is clipped at max_len (Open R1's rises past it)"
    ),
    "repetition_penalty": RewardMap(
        "repetition_penalty",
        keys={"repetition_n_grams": ("ngram_size", 3), "repetition_max_penalty": ("max_penalty", -1.0)},
    ),
    "length": RewardMap(  # Open R1's len_reward is Kimi 1.5's
        "kimi_length", {"unit": "characters"}, differs="min/max length over each prompt's completions, not the batch"
    ),
    "code": RewardMap("code", {"tests_column": "verification_info"}, differs="Python run in aha's local sandbox"),
    "binary_code": RewardMap(
        "binary_code", {"tests_column": "verification_info"}, differs="Python run in aha's local sandbox"
    ),
    "soft_overlong_punishment": RewardMap(
        "soft_overlong",
        keys={"max_completion_len": ("max_completion_len", 16384), "soft_punish_cache": ("soft_punish_cache", 4096)},
    ),
    # `trl grpo`'s names
    "accuracy_reward": RewardMap("accuracy", differs="a gold solution math-verify cannot parse scores None"),
    "get_soft_overlong_punishment": RewardMap("soft_overlong", {"max_completion_len": 1280, "soft_punish_cache": 256}),
}
# Open R1's and TRL's rewards aha does not have: name -> what it is
MISSING_REWARDS = {
    "ioi_code": "Open R1's IOI grader, on Piston or MorphCloud",
    "cf_code": "Open R1's Codeforces grader",
    "code_format": "Open R1's think/answer format with a fenced code block",
    "think_format_reward": "TRL's single-<think>-block format reward",
    "reasoning_accuracy_reward": "TRL's accuracy after </think>",
}
DEFAULT_REWARD_FUNCS = ["accuracy", "format", "tag_count"]  # Open R1's GRPOScriptArguments default
# reward parameter keys of rewards aha does not have (reward_funcs naming those is refused first)
OTHER_REWARD_KEYS = {
    "code_language": "code_format",
    "code_eval_test_batch_size": "ioi_code or cf_code",
    "code_eval_scoring_mode": "cf_code",
    "ioi_provider": "ioi_code",
}
CODE_REWARDS = ("code", "binary_code")

# keys refused unless they hold one of the values that change nothing: key -> (values, why and what instead)
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "model_revision": (
        (None, "main"),
        "aha loads a Hub model's main revision: download that revision (huggingface-cli download ID --revision REV "
        "--local-dir DIR) and set model_name_or_path: DIR",
    ),
    "trust_remote_code": ((None, False), "aha loads transformers' own architectures only"),
    "lora_task_type": ((None, "CAUSAL_LM"), "aha trains causal language models (CAUSAL_LM)"),
    "load_in_8bit": ((None, False), "aha does not load quantised weights: train LoRA on the full-precision model"),
    "load_in_4bit": ((None, False), "aha does not load quantised weights: train LoRA on the full-precision model"),
    "bnb_4bit_quant_type": ((None, "nf4"), "aha does not load quantised weights (see load_in_4bit)"),
    "use_bnb_nested_quant": ((None, False), "aha does not load quantised weights (see load_in_4bit)"),
    "bnb_4bit_quant_storage": ((None,), "aha does not load quantised weights (see load_in_4bit)"),
    "dataset_streaming": ((None, False), "aha reads the data set into memory: leave it false"),
    "streaming": ((None, False), "aha reads the data set into memory: leave it false"),
    "ignore_bias_buffers": ((None, False), "aha's DDP wrapper needs no bias-buffer workaround"),
    "dataset_mixture": (
        (None,),
        "aha reads one data set: give dataset_name (and dataset_config), or concatenate the mixture into one "
        "local .jsonl/.parquet file and give its path",
    ),
    "datasets": ((None, []), "aha reads one data set: give dataset_name (see dataset_mixture)"),
    "test_split_size": ((None,), "aha holds data out with a recipe's eval: section, not by splitting the mixture"),
    "reward_model_name_or_path": (
        (None,),
        "aha trains with reward functions, not a reward model: use reward_funcs (or a custom module:function reward)",
    ),
    "chat_template": (
        (None,),
        "aha uses the tokenizer's own chat template: set tokenizer.chat_template, save_pretrained the model and "
        "tokenizer into a directory and give that directory as model_name_or_path",
    ),
    "benchmarks": ((None, []), "aha runs no Open R1 benchmarks: evaluate the run with `aha eval`"),
    "callbacks": ((None, []), "aha runs no Open R1 callbacks: push the finished run with `aha export`"),
    "hub_model_revision": ((None, "main"), "aha pushes to the main branch of hub_model_id"),
    "overwrite_hub_revision": ((None, False), "aha pushes to the main branch of hub_model_id"),
    "push_to_hub_revision": ((None, False), "aha pushes to the main branch of hub_model_id"),
    "wandb_entity": ((None,), "set the WANDB_ENTITY environment variable instead (wandb reads it)"),
    "wandb_project": ((None,), "set the WANDB_PROJECT environment variable instead (wandb reads it)"),
    "wandb_run_group": ((None,), "set the WANDB_RUN_GROUP environment variable instead (wandb reads it)"),
    "e2b_router_url": ((None,), "aha runs code in its local sandbox (aha.sandbox), not on E2B"),
    "morph_router_url": ((None,), "aha runs code in its local sandbox (aha.sandbox), not on MorphCloud"),
    "enforce_same_language": ((None, False), "aha's code rewards run Python only"),
}
# keys that only choose infrastructure: not carried, with this note
NOT_CARRIED: dict[str, str] = {
    "attn_implementation": "aha loads the model with transformers' default attention (sdpa); the kernel does not "
    "change what is computed",
    "overwrite_output_dir": "aha refuses an existing run directory unless `--overwrite`, and continues one with "
    "`--resume` (transformers 5 dropped the field)",
    "wandb_log_unique_prompts": "aha logs completions with log_completions, not a wandb table of unique prompts",
    "code_provider": "aha runs the programs of its code rewards in its local sandbox (aha.sandbox)",
    "parallel_code_exec_per_proc": "aha's sandbox runs up to min(4, cores) programs at once (aha.sandbox.set_max_parallel)",
    "dataset_test_split": "TRL evaluates on it only when eval_strategy is not 'no'; aha evaluates with an eval: section",
}
MODEL_KEYS = ("model_name_or_path", "torch_dtype", "dtype")
LORA_KEYS = {  # ModelConfig key -> (LoraConfig field, TRL's default when use_peft is on, or None: not written)
    "lora_r": ("r", 16),
    "lora_alpha": ("lora_alpha", 32),
    "lora_dropout": ("lora_dropout", 0.05),
    "lora_target_modules": ("target_modules", None),
    "lora_target_parameters": ("target_parameters", None),
    "lora_modules_to_save": ("modules_to_save", None),
    "use_rslora": ("use_rslora", None),
    "use_dora": ("use_dora", None),
}
DATA_KEYS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_prompt_column", "system_prompt")
OWN_KEYS = (
    {*MODEL_KEYS, *LORA_KEYS, "use_peft", *DATA_KEYS, "reward_funcs", "reward_weights"}
    | set(REFUSED)
    | set(NOT_CARRIED)
    | set(OTHER_REWARD_KEYS)
    | {k for m in REWARDS.values() for k in m.keys}
)
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16"}


@dataclass
class Translation:
    """The aha recipe an Open R1/TRL config means, and notes on what was not carried."""

    recipe: dict[str, Any]
    notes: list[str]


def _short(value: Any, width: int = 60) -> str:
    """A value as messages show it: its repr, cut to `width` characters (a chat template is thousands)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def is_openr1_config(raw: dict[str, Any]) -> bool:
    """Is this mapping an Open R1 / ``trl grpo`` config (``model_name_or_path`` at the top, no aha ``model:`` or
    ``training:`` section) rather than an aha recipe?"""
    return isinstance(raw, dict) and "model_name_or_path" in raw and "model" not in raw and "training" not in raw


def _reward_entries(raw: dict[str, Any], src: str, notes: list[str]) -> list[Any]:
    from aha.rewards import REGISTRY

    funcs = raw.get("reward_funcs")
    if funcs is None:
        funcs = list(DEFAULT_REWARD_FUNCS)
        notes.append(f"reward_funcs: not given, Open R1's default {', '.join(funcs)}")
    if isinstance(funcs, str):
        funcs = [funcs]
    if not isinstance(funcs, list) or not funcs or not all(isinstance(f, str) for f in funcs):
        raise ValueError(f"{src}: reward_funcs must be a non-empty list of reward names, got {funcs!r}")
    weights = raw.get("reward_weights")
    if weights is not None and (
        not isinstance(weights, list)
        or len(weights) != len(funcs)
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
    ):
        raise ValueError(
            f"{src}: reward_weights must be {len(funcs)} numbers, one per reward_funcs entry, got {weights!r}"
        )
    used: set[str] = set()
    out: list[Any] = []
    for i, name in enumerate(funcs):
        if name in REWARDS:
            m = REWARDS[name]
            entry: dict[str, Any] = {"name": m.aha, **m.fixed}
            for key, (param, default) in m.keys.items():
                entry[param] = raw.get(key, default)
                used.add(key)
            used.update(("code_provider", "parallel_code_exec_per_proc") if name in CODE_REWARDS else ())
            renamed = f" as aha's {m.aha!r}" if m.aha != name else ""
            if renamed or m.differs:
                notes.append(f"reward {name!r}{renamed}" + (f": {m.differs}" if m.differs else ""))
        elif name in REGISTRY:  # an aha reward by its own name
            entry = {"name": name}
        elif "." in name and not name.endswith(".py") and ":" not in name:  # trl grpo's dotted import path
            module, _, function = name.rpartition(".")
            entry = {"name": f"{module}:{function}"}
        elif ":" in name:
            entry = {"name": name}
        else:
            close = difflib.get_close_matches(name, [*REWARDS, *REGISTRY], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if name in MISSING_REWARDS:
                hint = f" ({MISSING_REWARDS[name]})"
            raise ValueError(
                f"{src}: reward_funcs: {name!r}{hint} has no aha counterpart; Open R1/TRL names aha translates: "
                f"{', '.join(REWARDS)}; aha's own rewards: {', '.join(sorted(REGISTRY))} (or a custom "
                "module:function)"
            )
        if weights is not None and float(weights[i]) != 1.0:
            entry["weight"] = float(weights[i])
        out.append(entry if len(entry) > 1 else entry["name"])
    for key in {k for m in REWARDS.values() for k in m.keys}:
        if key in raw and key not in used:
            owner = next(n for n, m in REWARDS.items() if key in m.keys)
            raise ValueError(f"{src}: {key} sets Open R1's {owner!r} reward, which reward_funcs does not list")
    for key in ("code_provider", "parallel_code_exec_per_proc"):
        if key in raw and key not in used:
            raise ValueError(f"{src}: {key} sets Open R1's code rewards, which reward_funcs does not list")
    for key, owner in OTHER_REWARD_KEYS.items():
        if key in raw:
            raise ValueError(f"{src}: {key} sets Open R1's {owner} reward, which aha does not have")
    return out


def _dataset(raw: dict[str, Any], src: str, notes: list[str]) -> dict[str, Any]:
    from aha.tasks import TASKS

    name = raw.get("dataset_name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{src}: dataset_name must name the training data (a Hub id, local files or an aha task)")
    split = raw.get("dataset_train_split", "train")
    prompt_column = raw.get("dataset_prompt_column", "prompt")
    if name in TASKS:
        for key in ("dataset_config", "dataset_prompt_column"):
            if raw.get(key) not in (None, "prompt"):
                raise ValueError(
                    f"{src}: {key} does not apply to aha's built-in task {name!r} (its rows have a prompt)"
                )
        spec: dict[str, Any] = {"task": name, "split": split}
    else:
        spec = {"path": name}
        if raw.get("dataset_config") is not None:
            spec["name"] = raw["dataset_config"]
        spec["split"] = split
        if prompt_column != "prompt":
            spec["prompt_column"] = prompt_column
    if raw.get("system_prompt") is not None:
        spec["system_prompt"] = raw["system_prompt"]
    elif "dataset_prompt_column" in raw:
        notes.append(
            "system_prompt: not given, so text prompts reach the model as they are (Open R1 wraps each in a user "
            "message): give a system_prompt, or a prompt column of chat messages"
        )
    return spec


def _peft(raw: dict[str, Any], src: str) -> dict[str, Any] | None:
    given = [k for k in LORA_KEYS if k in raw]
    if not raw.get("use_peft"):
        if given:
            raise ValueError(f"{src}: {given[0]} is set but use_peft is not: set use_peft: true, or remove {given[0]}")
        return None
    peft: dict[str, Any] = {}
    for key, (name, default) in LORA_KEYS.items():
        value = raw.get(key, default)
        if value is not None:
            peft[name] = value
    return peft


def _precision(raw: dict[str, Any], src: str, training: dict[str, Any], notes: list[str]) -> None:
    if "torch_dtype" in raw and "dtype" in raw:
        raise ValueError(f"{src}: give dtype or its old name torch_dtype, not both")
    key = "torch_dtype" if "torch_dtype" in raw else "dtype"
    dtype = raw.get(key)
    if dtype in (None, "auto", "float32", "fp32"):
        return
    flag = DTYPES.get(str(dtype))
    if flag is None:
        raise ValueError(f"{src}: {key} must be auto, bfloat16, float16 or float32, got {dtype!r}")
    if training.get(flag) is False:
        raise ValueError(
            f"{src}: {key}: {dtype} with {flag}: false: aha trains float32 weights and computes in {dtype} only with "
            f"{flag}: true; set {flag}: true, or {key}: float32"
        )
    training[flag] = True
    notes.append(f"{key}: {dtype}: aha keeps float32 master weights and computes in {dtype} ({flag}: true)")


def translate(raw: dict[str, Any], src: str, kind: str = "grpo") -> Translation:
    """The aha recipe of an Open R1 / ``trl grpo`` config (see the module doc); errors are one-line ValueErrors
    naming the file and the key."""
    if kind != "grpo":
        raise ValueError(f"{src}: read as {ORIGIN}: run it with `aha train` (GRPO)")
    grpo_fields = field_types(GRPOConfig)
    for key in raw:
        if key in OWN_KEYS or key in grpo_fields:
            continue
        close = difflib.get_close_matches(key, [*OWN_KEYS, *grpo_fields], n=1)
        if close and close[0] in OWN_KEYS:
            raise ValueError(f"{src}: unknown key {key!r} (did you mean {close[0]!r}?)")
        # anything else goes to training:, where GRPOConfig names it (with its own did-you-mean)
    for key, (allowed, why) in REFUSED.items():
        if key in raw and raw[key] not in allowed:
            raise ValueError(f"{src}: {key}: {_short(raw[key])} has no aha counterpart: {why}")
    eval_on = raw.get("eval_strategy") not in (None, "no") or raw.get("do_eval") is True
    if eval_on and "dataset_test_split" in raw:
        raise ValueError(
            f"{src}: evaluating on dataset_test_split during training is not translated: set eval_strategy: no and "
            "add an eval: section to the translated recipe (aha train --dry-run prints it)"
        )
    notes: list[str] = []
    model = raw["model_name_or_path"]
    if not isinstance(model, str) or not model:
        raise ValueError(f"{src}: model_name_or_path must be a Hub id, a model directory or tiny, got {model!r}")
    recipe: dict[str, Any] = {"trainer": "grpo", "model": model, "dataset": _dataset(raw, src, notes)}
    recipe["rewards"] = _reward_entries(raw, src, notes)
    peft = _peft(raw, src)
    if peft is not None:
        recipe["peft"] = peft
    training = {k: copy.deepcopy(v) for k, v in raw.items() if k not in OWN_KEYS}
    _precision(raw, src, training, notes)
    recipe["training"] = training
    for key, why in NOT_CARRIED.items():
        if key in raw and raw[key] is not None:
            notes.append(f"{key}: {_short(raw[key])} not carried: {why}")
    return Translation(recipe, notes)
