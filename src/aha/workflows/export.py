"""Loading aha models (run directories, checkpoints, LoRA adapters, Hub ids) and exporting them as
self-contained directories that plain ``transformers`` loads, or as one GGUF file for llama.cpp / Ollama
(:func:`export_gguf`), optionally pushed to the Hugging Face Hub.

An exported directory holds safetensors weights, ``config.json``, the tokenizer with its chat template,
a ``generation_config.json`` whose ``eos_token_id`` includes the tokenizer's EOS (so ``generate`` and
``pipeline("text-generation")`` stop where training stopped) and a short model card. Nothing in it
refers to aha but its ``.aha-run`` marker (:mod:`aha.workflows.rundir`: what ``--overwrite`` may delete), which
is not pushed. The source is a local directory: a missing path is an error, never tried as a Hub id.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from aha.models.loading import (
    adapter_base,
    hub_offline,
    is_adapter,
    load_model,
    resolve_model_path,
    save_model,
)
from aha.workflows.rundir import MARKER, OutputKind, prepare_output, record_output

# what save_model (transformers' and peft's save_pretrained, the tokenizer, the generation config) and the card write
MODEL_DIR = OutputKind(
    "a model directory",
    writes=(
        "config.json",
        "generation_config.json",
        "adapter_config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        "tokenizer*",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.*",
        "vocab.json",
        "merges.txt",
        "README.md",
    ),
)
GGUF_FILE = OutputKind("a GGUF file", suffix=".gguf")


def check_push(repo_id: str) -> str:
    """Validate a push before any work: returns the token, or raises ValueError saying why not."""
    import huggingface_hub

    if not re.fullmatch(r"([\w.-]+/)?[\w.-]+", repo_id):
        raise ValueError(f"--push-to-hub {repo_id!r} is not a repository id (user/name)")
    if hub_offline():
        raise ValueError("cannot push to the Hub: HF_HUB_OFFLINE is set (unset it, with a network, to push)")
    token = huggingface_hub.get_token()
    if not token:
        raise ValueError("cannot push to the Hub: not logged in (run `hf auth login` or set HF_TOKEN)")
    return token


def push_folder(folder: Path, repo_id: str, token: str, timeout: float = 5.0) -> str:
    """Upload `folder` (or one file, as itself) to the model repository `repo_id` (created if needed); returns its
    URL."""
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
        if folder.is_file():
            api.upload_file(path_or_fileobj=str(folder), path_in_repo=folder.name, repo_id=repo_id, repo_type="model")
        else:  # aha's marker (what it wrote into --out) is bookkeeping of this machine, not part of the model
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", ignore_patterns=[MARKER])
    except Exception as e:  # HTTP, auth, network: one clear line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"push to {repo_id} failed: {msg}; the export is in {folder}") from None
    return f"{constants.ENDPOINT}/{repo_id}"


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
    resolved = resolve_model_path(source, hub=False)  # a run, checkpoint or model directory: never a Hub id
    adapter = is_adapter(resolved)
    if merge_lora and not adapter:
        raise ValueError(f"--merge-lora: {resolved} is not a LoRA adapter (no adapter_config.json)")
    out = prepare_output(out, MODEL_DIR, overwrite, sources=[resolved])
    try:
        model, tok = load_model(resolved, merge_lora=merge_lora)
        if tok.chat_template is None:
            from aha.console import console

            console.print(f"[yellow]warning[/yellow]: the tokenizer of {resolved} has no chat template")
        save_model(model, tok, out)
        base = adapter_base(resolved) if adapter else None
        (out / "README.md").write_text(model_card(push_to_hub or out.name, base, adapter and not merge_lora))
    finally:
        record_output(out)
    if push_to_hub:
        push_folder(out, push_to_hub, token or "")
    return out


def export_gguf(
    source: str | Path,
    out: str | Path,
    dtype: str,
    *,
    push_to_hub: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `source` (run dir, checkpoint, model directory; a LoRA adapter is merged into its base) as one GGUF
    file `out` (``.gguf``) with its tokenizer and chat template, the matrices in `dtype` (f32, f16, bf16, q8_0; see
    :func:`aha.models.gguf.write_gguf`). Returns `out`; with `push_to_hub`, uploads the file afterwards."""
    from aha.models.gguf import WRITE_DTYPES, require_gguf, write_gguf

    if dtype not in WRITE_DTYPES:
        raise ValueError(f"--gguf {dtype!r}: choose from {', '.join(WRITE_DTYPES)}")
    require_gguf()
    token = check_push(push_to_hub) if push_to_hub else None
    resolved = resolve_model_path(source)
    if not str(out).endswith(".gguf"):
        raise ValueError(f"--out {out}: a GGUF export is one file; give it a name ending in .gguf")
    out = prepare_output(out, GGUF_FILE, overwrite, sources=[resolved])
    model, tok = load_model(resolved, merge_lora=is_adapter(resolved))
    write_gguf(model, tok, out, dtype=dtype)
    if push_to_hub:
        push_folder(out, push_to_hub, token or "")
    return out
