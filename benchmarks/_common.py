"""Shared helpers for the benchmarks: model sizes, machine load, fp32 GEMM peak, FLOP counts, statistics."""

from __future__ import annotations

import os
import statistics
import time

import torch

# name -> build_tiny(**sizes). "1m" is the demo's default model; "19m" is ~19 M parameters.
SIZES: dict[str, dict[str, int]] = {
    "1m": {},
    "19m": dict(hidden_size=384, num_hidden_layers=8, intermediate_size=1536, num_attention_heads=6),
}


def build(size: str, seed: int = 0):
    from aha.models.tiny import build_tiny

    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    return build_tiny(seed=seed, **SIZES[size])


def load() -> str:
    """The machine's load average (1, 5, 15 min) and core count, for the record."""
    one, five, fifteen = os.getloadavg()
    return (
        f"loadavg {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )


def gemm_peak(n: int = 1024, reps: int = 10, rounds: int = 3) -> float:
    """Best fp32 GEMM throughput (FLOP/s) of torch.mm on n×n matrices: the machine's practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        dt = time.perf_counter() - t
        best = max(best, 2 * n**3 * reps / dt)
    return best


def model_dims(model) -> dict[str, int]:
    c = model.config
    return {
        "params": sum(p.numel() for p in model.parameters()),  # tied embeddings: counted once, as the lm_head
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
    }


def attention_flops(dims: dict[str, int], context_sum: float) -> float:
    """Forward FLOPs of QK^T and AV: 2 matmuls × 2 FLOP × hidden per (query, key) pair, per layer."""
    return 4 * dims["layers"] * dims["hidden"] * context_sum


def causal_pairs(length: float) -> float:
    """(query, key) pairs of causal attention over `length` positions."""
    return length * (length + 1) / 2


def step_flops(dims: dict[str, int], rows: int, prompt_len: float, completion_len: float) -> dict[str, float]:
    """FLOPs of one GRPO step (μ=1, beta=0: no old/ref pass) at the minimum: generation forward over the
    prompt and the generated tokens (2·params·tokens + attention), training forward+backward over
    prompt+completion (6·params·tokens + 3× forward attention)."""
    p = dims["params"]
    seq = prompt_len + completion_len
    gen = 2 * p * rows * seq + attention_flops(dims, rows * causal_pairs(seq))
    train = 6 * p * rows * seq + 3 * attention_flops(dims, rows * causal_pairs(seq))
    return {"generate": gen, "train": train, "total": gen + train}


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
