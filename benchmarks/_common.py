"""Shared helpers for the benchmarks: model sizes or a model directory, machine load, fp32/bf16 GEMM peaks, FLOP
counts (full fine-tuning and LoRA), statistics."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def dtypes(spec: str) -> list[str]:
    """``--dtype`` values: float32, bfloat16 or both (float32 first)."""
    names = list(DTYPES) if spec == "both" else [spec]
    for name in names:
        if name not in DTYPES:
            raise SystemExit(f"--dtype {spec!r}: choose float32, bfloat16 or both")
    return names


def bf16_refused() -> str | None:
    """None where this CPU runs bf16 natively, else why not (aha.devices' message)."""
    from aha.devices import bf16_refusal, bf16_supported

    return None if bf16_supported("cpu") else bf16_refusal("cpu")


def load_dir(path: str, dtype: str = "float32"):
    """(model, tokenizer) of a model directory (``aha.models.load_model``), weights in `dtype`, in eval mode."""
    from aha.models.loading import load_model

    if not Path(path).is_dir():
        raise SystemExit(f"--model {path!r}: not a directory (give a model directory, e.g. /tmp/smol/smol)")
    return load_model(path, dtype=DTYPES[dtype])


def lora_config(r: int):
    """The LoRA both tools get for ``--peft lora``: the course's r, α = 2r, all linear layers, no dropout."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def load() -> str:
    """The machine's load average (1, 5, 15 min) and core count, for the record."""
    one, five, fifteen = os.getloadavg()
    return (
        f"loadavg {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )


def gemm_peak(n: int = 1024, reps: int = 10, rounds: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM throughput (FLOP/s) of torch.mm on n×n `dtype` matrices: the machine's practical peak
    (a bf16 torch.mm runs ~2.2× the fp32 one on a CPU with AVX512-BF16)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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
    """Sizes for the FLOP count. `params`: the base model's weights (a PEFT model's adapter weights excluded; tied
    embeddings counted once, as the lm_head); `adapter`: LoRA weights (0 without); `trainable`: weights that get
    gradients (all of them in full fine-tuning, the adapter's under LoRA)."""
    c = model.config
    named = dict(model.named_parameters())  # deduplicated: a tied embedding appears once
    adapter = sum(p.numel() for n, p in named.items() if "lora_" in n)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {
        "params": sum(p.numel() for p in named.values()) - adapter,
        "adapter": adapter,
        "trainable": sum(p.numel() for p in named.values() if p.requires_grad),
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "attn_width": c.num_attention_heads * head_dim,
    }


def attention_flops(dims: dict[str, int], context_sum: float) -> float:
    """Forward FLOPs of QK^T and AV: 2 matmuls × 2 FLOP × (query heads × head_dim) per (query, key) pair, per layer
    (GQA shares keys/values between heads, not these products)."""
    return 4 * dims["layers"] * dims.get("attn_width", dims["hidden"]) * context_sum


def causal_pairs(length: float) -> float:
    """(query, key) pairs of causal attention over `length` positions."""
    return length * (length + 1) / 2


def step_flops(
    dims: dict[str, int], rows: int, prompt_len: float, completion_len: float, group: int = 1
) -> dict[str, float]:
    """FLOPs of one GRPO step (μ=1, beta=0: no old/ref pass) at the minimum, over `rows` completions, `group` of
    them per prompt (GRPO's G).

    The minimum runs each prompt once per group, not once per completion: its keys/values are the same for the G
    rows (prefill once in generation, one prompt forward in training, whose backward sums the G rows' gradients).
    So tokens = rows/G · P + rows · C, and attention pairs = rows/G · P(P+1)/2 + rows · (C·P + C(C+1)/2).
    (group=1 counts the prompt once per completion, the floor this script printed before.)

    Generation: a forward over those tokens, 2·N·tokens + attention, with N the base weights (a LoRA adapter merged
    into them costs nothing extra, as aha's sampler does it).
    Training forward + backward, per token:
      forward               2·(N + A)   (A: adapter weights, 0 in full fine-tuning)
      activation gradients  2·(N + A)   (dL/dx = dL/dy·Wᵀ through every layer, frozen or not: the gradient reaching
                                         a LoRA matrix in layer 1 has flowed back through the frozen base above it)
      weight gradients      2·T         (dL/dW = xᵀ·dL/dy only for trainable weights T: N in full fine-tuning,
                                         A under LoRA)
    so 6·N in full fine-tuning, but 4·N + 6·A (≈ 4·N) under LoRA, not 6·N: the frozen base needs no weight gradients.
    Attention has no weights; its backward is 2× its forward, so 3× forward attention either way."""
    if group < 1 or rows % group:
        raise ValueError(f"step_flops: group {group} must be >= 1 and divide rows {rows}")
    n, a = dims["params"], dims.get("adapter", 0)
    t = dims.get("trainable", n)
    prompts = rows // group
    tokens = prompts * prompt_len + rows * completion_len
    pairs = prompts * causal_pairs(prompt_len) + rows * (completion_len * prompt_len + causal_pairs(completion_len))
    attn = attention_flops(dims, pairs)
    gen = 2 * n * tokens + attn
    train = (4 * (n + a) + 2 * t) * tokens + 3 * attn
    return {"generate": gen, "train": train, "total": gen + train}


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
