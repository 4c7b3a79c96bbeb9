"""Loading aha models (run directories, checkpoints, LoRA adapters, Hub ids) and exporting them as
self-contained directories that plain ``transformers`` loads, optionally pushed to the Hugging Face Hub.

An exported directory holds safetensors weights, ``config.json``, the tokenizer with its chat template,
a ``generation_config.json`` whose ``eos_token_id`` includes the tokenizer's EOS (so ``generate`` and
``pipeline("text-generation")`` stop where training stopped) and a short model card. Nothing in it
refers to aha.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

RUN_MARKERS = ("config.yaml", "summary.json", "metrics.jsonl")
MODEL_MARKERS = ("config.json", "adapter_config.json")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TRUE = {"1", "ON", "YES", "TRUE"}


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
    from aha.data.format import eos_ids

    ids = eos_ids(tokenizer, model)
    gen = model.generation_config
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[0]


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE or bool(constants.HF_HUB_OFFLINE)


def check_push(repo_id: str) -> str:
    """Validate a push before any work: returns the token, or raises ValueError saying why not."""
    import huggingface_hub

    if not re.fullmatch(r"([\w.-]+/)?[\w.-]+", repo_id):
        raise ValueError(f"--push-to-hub {repo_id!r} is not a repository id (user/name)")
    if _hub_offline():
        raise ValueError("cannot push to the Hub: HF_HUB_OFFLINE is set (unset it, with a network, to push)")
    token = huggingface_hub.get_token()
    if not token:
        raise ValueError("cannot push to the Hub: not logged in (run `hf auth login` or set HF_TOKEN)")
    return token


def push_folder(folder: Path, repo_id: str, token: str, timeout: float = 5.0) -> str:
    """Upload `folder` to the model repository `repo_id` (created if needed); returns its URL."""
    from huggingface_hub import HfApi, constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as e:
        raise ValueError(
            f"cannot push to the Hub: {url.hostname} is unreachable ({e}); the export is in {folder}"
        ) from None
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as e:  # HTTP, auth, network: one clear line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"push to {repo_id} failed: {msg}; the export is in {folder}") from None
    return f"{constants.ENDPOINT}/{repo_id}"


def _prepare_out(out: Path, source: str, overwrite: bool) -> None:
    if Path(source).exists() and out.resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
        raise ValueError(f"--out {out} would overwrite the model being exported")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out} already holds files; choose another directory or pass --overwrite")
        if not any((out / m).exists() for m in MODEL_MARKERS):
            raise ValueError(f"--out {out} is not a model directory; refusing to delete it even with --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def model_card(name: str, base: str | None, adapter: bool) -> str:
    lines = ["---", "library_name: " + ("peft" if adapter else "transformers"), "pipeline_tag: text-generation"]
    if base:
        lines.append(f"base_model: {base}")
    lines += ["tags:", "- aha", "- grpo", "- reasoning", "---", "", f"# {name}", ""]
    lines.append("Trained with aha (GRPO for reasoning). It loads with plain transformers:")
    lines += [
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'chat = pipeline("text-generation", model="{name}")',
        'print(chat([{"role": "user", "content": "47+38"}], max_new_tokens=64)[0]["generated_text"][-1])',
        "```",
        "",
    ]
    return "\n".join(lines)


def export_model(
    source: str | Path,
    out: str | Path,
    *,
    merge_lora: bool = False,
    push_to_hub: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `source` (run dir, checkpoint, adapter) to `out` as a self-contained model directory.

    An adapter without `merge_lora` is exported as an adapter (it still needs its base and peft).
    Returns `out`; with `push_to_hub`, uploads it to that repository afterwards.
    """
    token = check_push(push_to_hub) if push_to_hub else None
    resolved = resolve_model_path(source)
    adapter = is_adapter(resolved)
    if merge_lora and not adapter:
        raise ValueError(f"--merge-lora: {resolved} is not a LoRA adapter (no adapter_config.json)")
    out = Path(out)
    _prepare_out(out, resolved, overwrite)
    model, tok = load_model(resolved, merge_lora=merge_lora)
    target = model.get_base_model() if adapter and not merge_lora else model
    fix_generation_config(target, tok)
    if tok.chat_template is None:
        from aha.train.logging import console

        console.print(f"[yellow]warning[/yellow]: the tokenizer of {resolved} has no chat template")
    model.save_pretrained(out)
    target.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    base = adapter_base(resolved) if adapter else None
    (out / "README.md").write_text(model_card(push_to_hub or out.name, base, adapter and not merge_lora))
    if push_to_hub:
        push_folder(out, push_to_hub, token or "")
    return out
