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
- ``checkpoint_complete.json``: the completion marker, written last: the step and every other file's size and
  SHA-256.

It is written to ``.checkpoint-<step>.tmp``, every file fsynced, then renamed into place (and the parent
directory fsynced): a crash mid-write leaves only a ``.tmp`` directory, which resuming ignores. Re-saving a step
moves the old directory aside to ``.checkpoint-<step>.old`` first; should the process die between the two
renames, the next resume puts the old one back. Rotation deletes a checkpoint's marker before its files.

Resuming trusts a checkpoint only once :func:`verify_checkpoint` passes: each file the marker lists is there with
its size and SHA-256. A checkpoint written by an older aha (a marker with only the step) is checked by loading
each of its files instead (a truncated or garbled file fails to load; a flipped bit in a tensor's data cannot be
told). ``"auto"`` resumes from the newest checkpoint that passes, naming the damaged file of each newer one in a
single line, and refuses when none passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aha.console import console
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
    """The checkpoint to resume from: None/False -> None; True -> the newest intact one (an error when there is
    none); "auto" -> the newest intact one, or None when there is no checkpoint at all (a fresh start); a path ->
    that checkpoint (an error when incomplete or damaged). Damaged newer checkpoints are skipped with one line
    saying which file of each is bad; when every checkpoint is damaged, an error lists them."""
    if spec is None or spec is False:
        return None
    if spec is True or spec == "auto":
        found = list_checkpoints(output_dir)
        if not found and spec is True:
            raise ValueError(f"resume_from_checkpoint=True but {output_dir} holds no complete checkpoint-<step>/")
        bad: list[tuple[Path, str]] = []
        for path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                if bad:
                    console.print(f"[yellow]{_damaged(bad)}: resuming from {path} instead[/yellow]", soft_wrap=True)
                return path
            bad.append((path, problem))
        if bad:
            raise ValueError(
                f"cannot resume: no checkpoint in {output_dir} is intact: {_damaged(bad)}; start the run over "
                "(aha: --overwrite; Python: resume_from_checkpoint=None with a fresh output_dir)"
            )
        return None
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint: {path} is not a directory")
    if not is_complete(path):
        raise ValueError(
            f"resume_from_checkpoint: {path} is incomplete (no {MARKER}; the run probably died while writing it); "
            "use an older checkpoint or resume_from_checkpoint='auto'"
        )
    problem = verify_checkpoint(path)
    if problem is not None:
        raise ValueError(
            f"resume_from_checkpoint: {path} is damaged: {problem}; use an older checkpoint or 'auto' (aha: --resume), "
            "which takes the newest intact one"
        )
    return path


def _damaged(bad: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{path} is damaged ({problem})" for path, problem in bad)


# ---------------------------------------------------------------------------------------- verifying
def file_record(path: Path) -> dict[str, Any]:
    """A file's size and SHA-256, as the completion marker records them."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def verify_checkpoint(path: str | Path) -> str | None:
    """None when checkpoint `path` can be trusted, else what is wrong with it, naming the file: a file its marker
    lists that is missing, or whose size or SHA-256 differs from the marker's (an older marker without them: a
    file that does not load)."""
    path = Path(path)
    try:
        marker = json.loads((path / MARKER).read_text())
        files = marker.get("files")
        if files is not None and not all(
            isinstance(w, dict) and isinstance(w.get("size"), int) and isinstance(w.get("sha256"), str)
            for w in files.values()
        ):
            raise ValueError("a file without its size and SHA-256")
    except (OSError, ValueError, AttributeError) as e:
        return f"{MARKER} (the completion marker) is unreadable: {type(e).__name__}: {e}"
    if files is None:
        return _check_loadable(path)
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the marker recorded {want['size']} (truncated or overwritten)"
        if file_record(f)["sha256"] != want["sha256"]:
            return f"{name}'s SHA-256 differs from the one the marker recorded (the file is corrupt)"
    return None


def _check_loadable(path: Path) -> str | None:
    """An older checkpoint (no sizes or hashes): does every file resuming reads load?"""
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "trainer_state.json").read_text())
        for key in ("global_step", "epoch", "log_history"):
            state[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"trainer_state.json does not load ({type(e).__name__}: {e})"
    for name in ("optimizer.pt", "rng_state.pt", "loop_state.pt"):
        try:
            torch.load(path / name, weights_only=True)
        except Exception as e:  # torch raises many kinds for a bad file (RuntimeError, EOFError, UnpicklingError)
            return f"{name} does not load ({type(e).__name__})"
    index = path / "model.safetensors.index.json"
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    except (OSError, ValueError, KeyError) as e:
        return f"{index.name} does not load ({type(e).__name__})"
    names = names or [n for n in ("model.safetensors", "adapter_model.safetensors") if (path / n).is_file()]
    if not names:
        return "it holds no model.safetensors (nor adapter_model.safetensors)"
    for name in names:
        try:
            load_file(path / name)
        except Exception as e:  # safetensors' own error type for a short or garbled file
            return f"{name} does not load ({type(e).__name__})"
    return None


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
    records = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            _fsync(f)
            records[f.relative_to(tmp).as_posix()] = file_record(f)
    marker = {"step": step, "files": records}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")  # last: its presence means "complete"
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
    """Delete all but the newest `limit` complete checkpoints (each one's marker first, so that one cut short
    leaves an incomplete directory, never a complete-looking one with files missing)."""
    for path in list_checkpoints(output_dir)[:-limit]:
        (path / MARKER).unlink()
        shutil.rmtree(path)


def remove_stale(output_dir: str | Path) -> None:
    """Remove the ``.checkpoint-*.tmp`` directories a killed run left behind, and put back a checkpoint a re-save
    had moved aside (``.checkpoint-<step>.old``) when the process died before its replacement was in place."""
    out = Path(output_dir)
    if not out.is_dir():
        return
    for p in out.glob(".checkpoint-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.glob(".checkpoint-*.old"):
        final = out / p.name[1:].removesuffix(".old")
        if final.exists() or not is_complete(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.replace(p, final)


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
