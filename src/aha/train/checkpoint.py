"""Checkpoints: ``OUTPUT_DIR/checkpoint-<step>/``, written atomically, read back exactly.

A checkpoint holds everything the rest of the run depends on, so that a run killed at any point and resumed from
its newest checkpoint ends (on CPU at one thread, same seed; with more threads the reloaded weights may round
differently in the last bit) with bit-identical weights and the same metrics lines as a run that
was never interrupted. What goes in it is the sum of its owners' state (:class:`aha.train.loop.TrainingLoop`
collects them); this module only writes and reads the directory:

- ``model.safetensors`` (or ``adapter_model.safetensors`` for PEFT), tokenizer and generation config, via
  :func:`aha.models.loading.save_model` (so a checkpoint loads as a model);
- ``optimizer.pt``: optimizer and LR scheduler state dicts;
- ``rng_state.pt``: the process's RNGs: python ``random``, numpy, torch CPU (+CUDA);
- ``loop_state.pt``: the loop's logging window and the owners' state (the trainer's data order, sampling generator,
  the batch in flight — one part per process where they differ);
- ``trainer_state.json``: step, epoch, ``log_history``, the byte offset of metrics.jsonl and the run's settings;
- ``checkpoint_complete.json``: the completion marker, written last.

It is written to ``.checkpoint-<step>.tmp``, every file fsynced, then renamed into place (and the parent
directory fsynced): a crash mid-write leaves only a ``.tmp`` directory, which resuming ignores.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aha.models.loading import save_model

MARKER = "checkpoint_complete.json"
PATTERN = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------- finding
def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete ``checkpoint-<step>`` directories of `output_dir`, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if is_complete(p)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_checkpoint(output_dir: str | Path, spec: str | bool | Path | None) -> Path | None:
    """The checkpoint to resume from: None/False -> None; True -> the newest (an error when there is none);
    "auto" -> the newest, or None (a fresh start); a path -> that checkpoint (an error when incomplete)."""
    if spec is None or spec is False:
        return None
    if spec is True or spec == "auto":
        found = latest_checkpoint(output_dir)
        if found is None and spec is True:
            raise ValueError(f"resume_from_checkpoint=True but {output_dir} holds no complete checkpoint-<step>/")
        return found
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint: {path} is not a directory")
    if not is_complete(path):
        raise ValueError(
            f"resume_from_checkpoint: {path} is incomplete (no {MARKER}; the run probably died while writing it); "
            "use an older checkpoint or resume_from_checkpoint='auto'"
        )
    return path


# ---------------------------------------------------------------------------------------- writing
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def global_rng_state() -> dict[str, Any]:
    """This process's global RNGs: python ``random``, numpy, torch CPU (+ every CUDA device)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_global_rng_state(states: dict[str, Any]) -> None:
    random.setstate(as_tuples(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    files: dict[str, Any],
    meta: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
    save_total_limit: int | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-<step>`` atomically (see the module docstring): the model (`state_dict`: the
    gathered weights when FSDP shards it) and tokenizer, each of `files` (name -> object) with ``torch.save``, and
    `meta` as ``trainer_state.json``; keep the newest `save_total_limit`. Returns its path."""
    out = Path(output_dir)
    final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, tokenizer, tmp, state_dict=state_dict)
    for name, obj in files.items():
        torch.save(obj, tmp / name)
    (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync(f)
    (tmp / MARKER).write_text(json.dumps({"step": step}) + "\n")  # last: its presence means "complete"
    _fsync(tmp / MARKER)
    _fsync(tmp)
    old = out / f".checkpoint-{step}.old"
    if final.exists():  # re-saving a step (e.g. resumed from an older checkpoint): swap, then drop the old
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(out)
    if old.exists():
        shutil.rmtree(old)
    if save_total_limit:
        rotate(out, save_total_limit)
    return final


def rotate(output_dir: str | Path, limit: int) -> None:
    """Delete all but the newest `limit` complete checkpoints."""
    for path in list_checkpoints(output_dir)[:-limit]:
        shutil.rmtree(path)


def remove_stale(output_dir: str | Path) -> None:
    """Remove the ``.checkpoint-*.tmp`` directories a killed run left behind."""
    out = Path(output_dir)
    if out.is_dir():
        for p in out.glob(".checkpoint-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------- loading
def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a checkpoint's weights into `model` (a PEFT model: its adapter), checking that they fit."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):  # PEFT: only the adapter was saved
        from peft import set_peft_model_state_dict

        file = path / "adapter_model.safetensors"
        if not file.is_file():
            raise ValueError(f"checkpoint {path} has no adapter_model.safetensors for this PEFT model")
        set_peft_model_state_dict(model, load_file(file))
        return
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    files = [path / f for f in files] or [path / "model.safetensors"]
    if not files[0].is_file():
        raise ValueError(f"checkpoint {path} has no model.safetensors")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(f))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in sd if k in own}
    missing = [k for k in missing if own[k].data_ptr() not in loaded]  # tied weights come with their twin
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``*.pt`` files by name, ``trainer_state.json``) of checkpoint `path`."""
    path = Path(path)
    files = {f.name: torch.load(f, weights_only=True) for f in sorted(path.glob("*.pt"))}
    return files, json.loads((path / "trainer_state.json").read_text())


def as_tuples(x: Any) -> Any:
    """random.setstate wants tuples where the saved state may hold lists."""
    return tuple(as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
