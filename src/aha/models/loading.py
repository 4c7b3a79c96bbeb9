"""Loading models: run directories, checkpoints, LoRA adapters, Hub ids and recipe model specs; saving them."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RUN_MARKERS = ("config.yaml", "summary.json", "metrics.jsonl")
PIPELINE_MARKER = "pipeline.yaml"  # a pipeline directory (aha.workflows.pipeline writes it first)
STAGE_DONE = "stage_done.json"  # a pipeline stage that finished (written last)
MODEL_MARKERS = ("config.json", "adapter_config.json")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# peft 0.21's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning from
# transformers >= 5.2x about peft's own code, which aha cannot change): silenced around aha's calls into peft only
PEFT_OWN_WARNING = r"`is_gradient_checkpointing` is deprecated"


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Around a call that builds a peft model: no :data:`PEFT_OWN_WARNING` (every other warning still shows)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_OWN_WARNING, category=FutureWarning)
        yield


def peft_model(model, config):
    """``peft.get_peft_model(model, config)`` without peft's own FutureWarning (:data:`PEFT_OWN_WARNING`)."""
    from peft import get_peft_model

    with quiet_peft():
        return get_peft_model(model, config)


def looks_local(text: str) -> bool:
    """Does `text` name a local path rather than a Hub id (``owner/name``)? It does when it exists, starts with
    ``.``, ``/`` or ``~``, holds a backslash (or the platform's separator, where that is not ``/``), ends with ``/``,
    has more than one ``/``, or its first part is a directory here (``runs/x`` while ``runs/`` exists), and when it
    is not shaped like a Hub id at all. Such a path is never tried on the Hub."""
    head = text.split("/", 1)[0]
    return (
        Path(text).expanduser().exists()
        or text.startswith((".", "/", "~"))
        or "\\" in text
        or (os.sep != "/" and os.sep in text)
        or text.endswith("/")
        or text.count("/") > 1
        or ("/" in text and Path(head).is_dir())
        or not HUB_ID_RE.fullmatch(text)
    )


def resolve_model_path(path: str | Path, hub: bool = True) -> str:
    """A local model directory (a run directory means its ``model/``; a pipeline directory, the model of its last
    finished stage that trained one; a ``.gguf`` file, its conversion, made once and cached by content with
    :func:`aha.models.gguf.converted_gguf`), or (`hub`) a Hub id kept as is; a path that :func:`looks_local` is
    never taken for a Hub id.

    Raises FileNotFoundError for a missing local path and ValueError for a directory with no model.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() == ".gguf" and not p.is_dir():
        from aha.models.gguf import converted_gguf

        return str(converted_gguf(p))  # FileNotFoundError when missing, ValueError when not a GGUF file
    if p.is_dir():
        if (p / PIPELINE_MARKER).is_file():
            p = _last_stage_model(p)
        if (p / "model").is_dir() and any((p / m).exists() for m in RUN_MARKERS):
            p = p / "model"
        if not any((p / m).exists() for m in MODEL_MARKERS):
            raise ValueError(f"{p} is not a model directory (no {' or '.join(MODEL_MARKERS)})")
        return str(p)
    if p.exists():
        raise NotADirectoryError(f"model path {p} is a file, not a model directory")
    if hub and not looks_local(str(path)):
        return str(path)  # a Hugging Face Hub id
    raise FileNotFoundError(f"{path}: no such directory" + (" (and not a Hub id)" if hub else ""))


def _last_stage_model(pipeline: Path) -> Path:
    """The run directory of a pipeline's last finished training stage (``<i>-<name>/`` with ``stage_done.json``
    and a ``model/``)."""
    stages = sorted(
        (d for d in pipeline.iterdir() if d.is_dir() and (d / STAGE_DONE).is_file() and (d / "model").is_dir()),
        key=lambda d: int(d.name.split("-", 1)[0]) if d.name.split("-", 1)[0].isdigit() else -1,
    )
    if not stages:
        raise ValueError(f"{pipeline} is a pipeline directory with no finished training stage yet (no model)")
    return stages[-1]


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


def load_model(
    path: str | Path, *, merge_lora: bool = False, dtype: Any = None, attn_implementation: str | None = None
):
    """Load (model, tokenizer) from a run directory, model directory, adapter directory or Hub id.

    A LoRA adapter (``adapter_config.json``) is loaded on top of its base with peft; `merge_lora`
    folds it into the base weights and returns a plain transformers model. `dtype` (``torch.bfloat16``, "auto", ...)
    and `attn_implementation` ("eager", "sdpa", "flash_attention_2") go to ``from_pretrained``; None: its defaults.
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_model_path(path)
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if is_adapter(resolved):
            from peft import AutoPeftModelForCausalLM

            with quiet_peft():
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


def save_model(model, tokenizer, out: str | Path, *, state_dict: dict[str, Any] | None = None) -> Path:
    """Write a directory that ``from_pretrained`` (transformers, peft, vLLM) loads: the model's weights and config
    (a PEFT model: its adapter, with ``save_pretrained``; `state_dict`: these weights instead of the module's, e.g.
    gathered from FSDP shards), the tokenizer, and the generation config with the EOS fix below. Returns `out`.

    The saved ``generation_config.json`` stops on every id in :func:`aha.data.prompts.eos_ids` (the tokenizer's EOS
    plus any the model's config already had) and pads with the tokenizer's pad token. aha's samplers stop on those
    ids, so every consumer of a saved directory (``generate``, ``pipeline("text-generation")``, a vLLM engine)
    stops where training and sampling stopped; without it a chat model whose config names only its base EOS runs
    on past the end of its turn. The fix is a union, so saving twice changes nothing, and it is made on a copy:
    the model in memory is left as it was."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    gen = _generation_config(model, tokenizer)
    if gen is not None:
        gen.save_pretrained(out)
    return out


def _generation_config(model, tokenizer):
    """A copy of the model's generation config (a PEFT model's is its base's) that stops on the tokenizer's EOS
    too; None for a model without one."""
    from aha.data.prompts import eos_ids

    if getattr(model, "generation_config", None) is None:
        return None
    gen = copy.deepcopy(model.generation_config)
    ids = eos_ids(tokenizer, model)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[0]
    return gen


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
    with :func:`load_model` (an adapter is merged into its base before training)."""
    if isinstance(spec, dict):
        from aha.models.tiny import build_tiny

        sizes = {"seed": seed, **spec["tiny"]}
        return build_tiny(**sizes)
    model, tok = load_model(spec, merge_lora=is_adapter(resolve_model_path(spec)))
    return model, tok
