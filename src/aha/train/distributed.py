"""Data parallelism on an existing engine: accelerate (``accelerate launch``) or ``torchrun``.

Every process holds the whole model (DDP; FSDP shards it when accelerate's config says so), takes a
contiguous share of each global batch, and the gradients are averaged by the engine in ``backward``.
A GRPO generation batch is N = P prompts × G completions; process r generates rows
``[r·N/W, (r+1)·N/W)``, so a group may straddle two processes. Rewards are therefore gathered over
all processes before the group-relative advantages are computed, and each process keeps the
advantages of its own rows. On a single process every helper here is the identity.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator

import torch
from accelerate import Accelerator


def make_accelerator(
    use_cpu: bool = False, mixed_precision: str | None = None, kwargs_handlers: list | None = None
) -> Accelerator:
    """The run's Accelerator; on a machine without CUDA (or with ``use_cpu``) it runs on the CPU, and
    several processes talk over gloo. `mixed_precision` ("no", "bf16", "fp16"; see ``aha.train.precision``):
    None keeps what accelerate already has (its config / environment). `kwargs_handlers`: accelerate's (DDP
    options, the process group's backend and timeout)."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if mixed_precision is not None and state and state.get("_mixed_precision") != mixed_precision:
        # accelerate keeps one precision per process; a new trainer with another one starts it afresh, as
        # transformers' TrainingArguments does (the process group, PartialState, is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(
        cpu=use_cpu or not torch.cuda.is_available(), mixed_precision=mixed_precision, kwargs_handlers=kwargs_handlers
    )
    if acc.num_processes > 1:
        atexit.register(_end)  # a gloo process group left open makes the interpreter hang on exit
    return acc


def _end() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def full_state_dict(acc: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights for saving, when FSDP shards them (a collective: every process calls it);
    None when each process already holds them all (one process, DDP)."""
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.FSDP:
        return None
    return acc.get_state_dict(model)


def world_size() -> int:
    """Processes in the run as the launcher set them (1 when not launched by accelerate / torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_main_process() -> bool:
    """True on the process that writes files (rank 0), also before an Accelerator exists."""
    return int(os.environ.get("RANK", "0")) == 0


def shard(n: int, rank: int, world: int) -> slice:
    """The rows of an n-row global batch that process `rank` owns (n must divide evenly)."""
    if n % world:
        raise ValueError(f"a batch of {n} rows cannot be split evenly over {world} processes")
    size = n // world
    return slice(rank * size, (rank + 1) * size)


def gather_rows(acc: Accelerator, t: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each process -> (W·n, ...) everywhere, in rank order (the global row order)."""
    if acc.num_processes == 1:
        return t
    return acc.gather(t.contiguous())


def gather_ragged(acc: Accelerator, t: torch.Tensor, pad_value: float | int = 0, left: bool = False) -> torch.Tensor:
    """(n_r, ...) on process r, where the row count n_r and (for 2-D tensors) the width may differ between
    processes -> (Σ n_r, ...) on every process, in rank order; rows narrower than the widest are padded with
    ``pad_value`` (on the left when ``left``)."""
    if acc.num_processes == 1:
        return t
    counts = acc.gather(torch.tensor([t.size(0)], device=t.device)).tolist()  # (W,)
    if t.dim() == 2:
        width = int(acc.gather(torch.tensor([t.size(1)], device=t.device)).max())
        t = torch.nn.functional.pad(t, (width - t.size(1), 0) if left else (0, width - t.size(1)), value=pad_value)
    rows = max(counts)
    t = torch.cat([t, t.new_full((rows - t.size(0), *t.shape[1:]), pad_value)])  # every process sends `rows`
    everything = acc.gather(t.contiguous())  # (W·rows, ...)
    keep = [r * rows + i for r, c in enumerate(counts) for i in range(c)]
    return everything[torch.tensor(keep, dtype=torch.long, device=everything.device)]


def gather_objects(acc: Accelerator, obj: object) -> list[object]:
    """Every process's ``obj`` (picklable), as a list in rank order, on every process."""
    if acc.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def sum_all(acc: Accelerator, value: float) -> float:
    """The sum of a number over all processes."""
    if acc.num_processes == 1:
        return value
    return float(acc.reduce(torch.tensor([float(value)], dtype=torch.float64, device=acc.device), "sum").item())


def all_true(acc: Accelerator, flag: bool) -> bool:
    """True only if `flag` holds on every process (so that all of them take the same branch)."""
    if acc.num_processes == 1:
        return flag
    return sum_all(acc, 0.0 if flag else 1.0) == 0.0


GRAD_BUCKET = 1 << 24  # elements per all-reduce in average_gradients (64 MB of fp32), as DDP's buckets


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """What DDP's backward does, by hand, for a loss whose forward bypassed the DDP wrapper: every gradient
    becomes its mean over the ``world`` processes (a missing one counts as zeros), all-reduced in flat buckets
    of at most ``GRAD_BUCKET`` elements. Every process must call it with the same parameters."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    i = 0
    while i < len(grads):
        j, n = i + 1, grads[i].numel()
        while j < len(grads) and n + grads[j].numel() <= GRAD_BUCKET:
            n += grads[j].numel()
            j += 1
        bucket = grads[i:j]
        flat = torch._utils._flatten_dense_tensors(bucket)
        torch.distributed.all_reduce(flat)
        flat.div_(world)
        for g, f in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            g.copy_(f)
        i = j


@contextlib.contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """Generation under FSDP (version 2): all-gather every sharded module's parameters once, so that the
    sampler's forwards (whose number differs between processes) run without collectives; reshard after.
    A no-op for an unsharded model."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        yield
        return
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()
