"""GRPO checkpoints: ``OUTPUT_DIR/checkpoint-<step>/``, written atomically, restored exactly.

A checkpoint holds everything the rest of the run depends on, so that a run killed at any point and
resumed from its newest checkpoint ends (on CPU, same seed) with bit-identical weights and the same
metrics lines as a run that was never interrupted:

- ``model.safetensors`` (or ``adapter_model.safetensors`` for PEFT) + tokenizer, via ``save_pretrained``;
- ``optimizer.pt``: optimizer and LR scheduler state dicts;
- ``rng_state.pt``: python ``random`` (global and the trainer's prompt-order RNG), numpy, torch CPU (+CUDA)
  and the sampling generator;
- ``loop_state.pt``: the generation batch in flight (a batch can span several optimiser steps) and the
  metrics accumulated since the last logged line;
- ``trainer_state.json``: step, epoch, prompt order, ``log_history`` and the byte offset of metrics.jsonl;
- ``checkpoint_complete.json``: the completion marker, written last.

It is written to ``.checkpoint-<step>.tmp``, every file fsynced, then renamed into place (and the parent
directory fsynced): a crash mid-write leaves only a ``.tmp`` directory, which resuming ignores.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aha.console import console

if TYPE_CHECKING:
    from aha.train.grpo import GRPOTrainer

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


def rng_states(trainer: GRPOTrainer) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "trainer": trainer._rng.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "sampler": trainer._gen.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(
    trainer: GRPOTrainer,
    opt: torch.optim.Optimizer,
    sched: Any,
    loop: dict[str, Any],
    step: int | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``OUTPUT_DIR/checkpoint-<step>`` atomically (see the module docstring); returns its path.
    `state_dict`: the gathered weights when FSDP shards the model."""
    out = Path(trainer.args.output_dir)
    step = trainer.state.global_step if step is None else step
    final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    trainer.model.save_pretrained(tmp, state_dict=state_dict)
    trainer.tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
    torch.save(rng_states(trainer), tmp / "rng_state.pt")
    torch.save(loop, tmp / "loop_state.pt")
    metrics = trainer.logger.path if trainer.logger is not None else None
    state = {
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "order": trainer._order,
        "epoch_rows": trainer._epoch_rows,
        "metrics_path": str(metrics) if metrics is not None else None,
        "metrics_offset": metrics.stat().st_size if metrics is not None and metrics.exists() else None,
        "log_history": trainer.state.log_history,
        "args": trainer.args.to_dict(),
    }
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1, default=str) + "\n")
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
    if trainer.args.save_total_limit:
        rotate(out, trainer.args.save_total_limit)
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
def _load_weights(model: torch.nn.Module, path: Path) -> None:
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


def load_checkpoint(trainer: GRPOTrainer, opt: torch.optim.Optimizer, sched: Any, path: str | Path) -> dict[str, Any]:
    """Restore the model, optimizer, scheduler, RNGs, data position and metrics history from `path`;
    truncate metrics.jsonl back to the checkpoint's offset. Returns the loop state (batch in flight, ...)."""
    path = Path(path)
    _load_weights(trainer.model, path)
    optim = torch.load(path / "optimizer.pt", weights_only=True)
    opt.load_state_dict(optim["optimizer"])
    sched.load_state_dict(optim["scheduler"])
    state = json.loads((path / "trainer_state.json").read_text())
    trainer.state.global_step = state["global_step"]
    trainer.state.epoch = state["epoch"]
    trainer.state.log_history = state["log_history"]
    trainer._order = list(state["order"])
    trainer._epoch_rows = state["epoch_rows"]
    rng = torch.load(path / "rng_state.pt", weights_only=True)
    random.setstate(_tuples(rng["python"]))
    trainer._rng.setstate(_tuples(rng["trainer"]))
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    trainer._gen.set_state(rng["sampler"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    metrics = trainer.logger.path if trainer.logger is not None else None
    offset = state.get("metrics_offset")
    if metrics is not None and offset is not None and metrics.exists():
        if metrics.stat().st_size >= offset:
            os.truncate(metrics, offset)  # drop the lines logged after the checkpoint: they will be logged again
        else:
            console.print(f"[yellow]{metrics} is shorter than at {path.name}: not truncated[/yellow]")
    console.print(f"[bold]GRPO[/bold]: resumed from {path} at step {trainer.state.global_step}")
    return torch.load(path / "loop_state.pt", weights_only=True)


def inflight_of(loop: dict[str, Any], rank: int, world: int, path: str | Path) -> dict[str, Any] | None:
    """This process's batch in flight from a loaded loop state: a checkpoint written by W processes in the middle
    of a generation batch holds each process's own rows (``inflight_by_process``), and resumes on W processes only."""
    by_process = loop.pop("inflight_by_process", None)
    if loop.get("inflight") is None:  # saved at the end of a batch: any number of processes can go on
        return None
    saved_by = len(by_process) if by_process is not None else 1
    if saved_by != world:
        raise ValueError(
            f"resume_from_checkpoint: {path} was saved by {saved_by} process(es) in the middle of a generation"
            f" batch, whose rows are split between them; resume it with {saved_by} process(es), not {world}"
            " (or resume from a checkpoint saved at the end of a batch)"
        )
    return by_process[rank] if by_process is not None else loop["inflight"]


def _tuples(x: Any) -> Any:
    """random.setstate wants tuples where the saved state may hold lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def fail_nonfinite(
    trainer: GRPOTrainer,
    opt: torch.optim.Optimizer,
    sched: Any,
    inflight: dict[str, Any],
    pending: dict[str, list[float]],
    marks: dict[str, int],
    losses: list[float],
) -> None:
    """A non-finite loss or gradient norm: keep the weights as they are (the step is not applied), make sure
    a checkpoint of this last good state exists, and stop with an error that says where it is. `marks`: the
    length of each `pending` metric list when the failing accumulation window started."""
    opt.zero_grad(set_to_none=True)
    what = "loss" if not all(map(math.isfinite, losses)) else "gradient norm"
    loop = {"inflight": inflight, "pending": {k: v[: marks[k]] for k, v in pending.items() if marks.get(k)}}
    step = trainer.state.global_step
    path = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    if not is_complete(path) and trainer.accelerator.is_main_process:
        path = save_checkpoint(trainer, opt, sched, loop)
    raise RuntimeError(
        f"GRPO: non-finite {what} in optimiser step {step + 1}; the update was not applied and the last good "
        f"state (after step {step}) is saved in {path}. Lower learning_rate or max_grad_norm, or check the model "
        "and rewards for NaN/inf; resume with resume_from_checkpoint='auto' (or `aha train --resume`)"
    )
