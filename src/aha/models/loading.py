"""Loading models: run directories, checkpoints, LoRA adapters, Hub ids and recipe model specs; saving them."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

RUN_MARKERS = ("config.yaml", "summary.json", "metrics.jsonl")
MODEL_MARKERS = ("config.json", "adapter_config.json")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(path: str | Path) -> str:
    """A local model directory (a run directory means its ``model/``), or a Hub id kept as is.

    Raises FileNotFoundError for a missing local path and ValueError for a directory with no model.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "model").is_dir() and any((p / m).exists() for m in RUN_MARKERS):
            p = p / "model"
        if not any((p / m).exists() for m in MODEL_MARKERS):
            raise ValueError(f"{p} is not a model directory (no {' or '.join(MODEL_MARKERS)})")
        return str(p)
    if p.exists():
        raise NotADirectoryError(f"model path {p} is a file, not a model directory")
    if HUB_ID_RE.fullmatch(str(path)) and not str(path).startswith("."):
        return str(path)  # looks like a Hugging Face Hub id
    raise FileNotFoundError(f"model path {path} does not exist")


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on (``base_model_name_or_path``)."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/adapter_config.json names no base_model_name_or_path")
    return str(base)


def load_tokenizer(path: str):
    """The tokenizer saved with `path`, or the adapter's base model's tokenizer when it has none."""
    from transformers import AutoTokenizer

    src = path
    if is_adapter(path) and not any((Path(path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        src = adapter_base(path)
    try:
        return AutoTokenizer.from_pretrained(src)
    except OSError as e:
        raise ValueError(f"cannot load the tokenizer of {src}: {str(e).splitlines()[0]}") from None


def load_model(path: str | Path, *, merge_lora: bool = False, dtype=None):
    """Load (model, tokenizer) from a run directory, model directory, adapter directory or Hub id.

    A LoRA adapter (``adapter_config.json``) is loaded on top of its base with peft; `merge_lora`
    folds it into the base weights and returns a plain transformers model.
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_model_path(path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        if is_adapter(resolved):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(resolved, **kwargs)
            if merge_lora:
                model = model.merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except OSError as e:
        raise ValueError(f"cannot load model {resolved}: {str(e).splitlines()[0]}") from None
    tok = load_tokenizer(resolved)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def fix_generation_config(model, tokenizer) -> None:
    """Make ``generation_config`` stop on the tokenizer's EOS (plus any EOS it already had) and pad."""
    from aha.data.prompts import eos_ids

    ids = eos_ids(tokenizer, model)
    gen = model.generation_config
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[0]


def hub_offline(probe: bool = False) -> bool:
    """True when HF_HUB_OFFLINE is set; with `probe`, also when huggingface.co:443 does not answer within 2 s."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return True
    return probe and hub_unreachable()


@functools.cache
def hub_unreachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
    except OSError:
        return True
    return False


def load_recipe_model(spec: str | dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) for a recipe's model: the tiny model built fresh, or a directory / Hub id loaded
    with :func:`aha.workflows.export.load_model` (an adapter is merged into its base before training)."""
    if isinstance(spec, dict):
        from aha.models.tiny import build_tiny

        sizes = {"seed": seed, **spec["tiny"]}
        return build_tiny(**sizes)
    from aha.models.loading import is_adapter, load_model, resolve_model_path

    model, tok = load_model(spec, merge_lora=is_adapter(resolve_model_path(spec)))
    return model, tok
