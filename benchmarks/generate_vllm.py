"""Rollout throughput of vLLM's CPU engine (run under .venv-vllm: `make test-vllm` builds it; PYTHONPATH=src).

The same workload as ``benchmarks/generate.py``: B arithmetic chat prompts, T new tokens per row, temperature 1.0,
EOS made impossible (``ignore_eos``), so every row produces exactly T tokens and tokens/s = B·T / wall time. The
model is ``_common.build(size)`` with its attention widened where vLLM's CPU kernel needs it (it rejects head_dim
16, the 1m model's: ``--heads`` overrides the head count, default: the size's own when head_dim >= 32, else
hidden/64). ``--model DIR`` (replaces ``--size``) loads a model directory as it is (vLLM reads the HF directory;
the prompts use its tokenizer's chat template). ``--dtype float32|bfloat16``: the engine's dtype. ``--threads N``
binds the engine to cores 0..N-1 (``VLLM_CPU_OMP_THREADS_BIND``, unless already set; 0: vLLM's own choice).
Engine start-up is timed separately; each rep is one ``LLM.generate`` of the whole batch (median).

    .venv-vllm/bin/python benchmarks/generate_vllm.py --size 1m
    .venv-vllm/bin/python benchmarks/generate_vllm.py --size 19m --batch 64 --new-tokens 128
    .venv-vllm/bin/python benchmarks/generate_vllm.py --model /tmp/smol/smol --dtype bfloat16 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SIZES, load  # noqa: E402


def build_for_vllm(size: str, heads: int | None, out: Path):
    """`_common.build(size)`'s model (same sizes, seed 0), with a head count vLLM's CPU attention accepts."""
    from aha.models.tiny import TinyConfig, build_tiny

    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    sizes = dict(SIZES[size])
    hidden = sizes.get("hidden_size", TinyConfig.hidden_size)
    n_heads = heads or sizes.get("num_attention_heads", TinyConfig.num_attention_heads)
    if heads is None and hidden // n_heads < 32:
        n_heads = max(1, hidden // 64)
    if hidden % n_heads or hidden // n_heads < 32:
        raise SystemExit(f"--heads {n_heads}: head_dim {hidden}/{n_heads} must be a whole number >= 32 for vLLM's CPU")
    sizes["num_attention_heads"] = n_heads
    model, tok = build_tiny(out, seed=0, **sizes)
    return model, tok, n_heads


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1m", help=f"one of {sorted(SIZES)}; ignored with --model")
    ap.add_argument("--model", default=None, help="a model directory (e.g. /tmp/smol/smol); replaces --size")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the engine's dtype")
    ap.add_argument(
        "--threads", type=int, default=0, help="bind to cores 0..N-1 (VLLM_CPU_OMP_THREADS_BIND); 0: vLLM's choice"
    )
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default: see above)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv-cache-gib", default="1", help="VLLM_CPU_KVCACHE_SPACE unless already set (default: 1)")
    args = ap.parse_args(argv)
    if args.model and not Path(args.model).is_dir():
        ap.error(f"--model {args.model!r}: not a directory (give a model directory, e.g. /tmp/smol/smol)")
    if args.model and args.heads is not None:
        ap.error("--heads applies to --size only: a --model directory is loaded as it is")
    if args.threads < 0 or args.threads > (os.cpu_count() or 1):
        ap.error(f"--threads {args.threads}: must be 0 (vLLM's choice) to {os.cpu_count()} (this machine's cores)")
    if args.threads:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", args.kv_cache_gib)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, as VLLMRollout runs it

    from aha.data.prompts import render_prompt
    from aha.tasks import get_task

    try:
        from vllm import LLM
        from vllm import SamplingParams as VSP
    except ImportError:
        raise SystemExit("vllm is not installed: run this under .venv-vllm (make test-vllm creates it)") from None

    with tempfile.TemporaryDirectory(prefix="aha-bench-vllm-") as tmp:
        if args.model:
            from transformers import AutoTokenizer

            path, what, tok = args.model, args.model, AutoTokenizer.from_pretrained(args.model)
        else:
            model, tok, heads = build_for_vllm(args.size, args.heads, Path(tmp))
            path, what = (
                tmp,
                f"{args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, {heads} heads)",
            )
        rows = get_task("arithmetic", digits=2).rows("train", args.batch, seed=0)
        prompts = [
            {"prompt_token_ids": tok(render_prompt(tok, r["prompt"]), add_special_tokens=False)["input_ids"]}
            for r in rows
        ]
        print(f"machine: {load()}")
        t = time.perf_counter()
        llm = LLM(
            model=path,
            dtype=args.dtype,
            seed=0,
            max_model_len=max(len(p["prompt_token_ids"]) for p in prompts) + args.new_tokens + 8,
            distributed_executor_backend="uni",
        )
        start = time.perf_counter() - t
        sp = VSP(temperature=1.0, max_tokens=args.new_tokens, ignore_eos=True, seed=None)
        llm.generate(prompts, sp, use_tqdm=False)  # warm-up
        times, tokens = [], 0
        cpu0 = time.process_time()  # every thread of this process (the engine runs in it): how many cores it kept busy
        for _ in range(args.reps):
            t = time.perf_counter()
            outs = llm.generate(prompts, sp, use_tqdm=False)
            times.append(time.perf_counter() - t)
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        if tokens != args.batch * args.new_tokens:
            raise SystemExit(f"expected {args.batch * args.new_tokens} generated tokens, got {tokens}")
        median = statistics.median(times)
        busy = (time.process_time() - cpu0) / sum(times)
        print(
            f"{what} {args.dtype}, batch {args.batch} × {args.new_tokens} new tokens, temperature 1.0, cores "
            f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}: engine start {start:.1f} s; per rep median {median:.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f}); CPU busy {busy:.2f} cores"
        )
        print(f"machine at end: {load()}")
        print(f"vllm_tokens_per_s={tokens / median:.0f}")
        print(f"vllm_cpu_busy={busy:.2f}")


if __name__ == "__main__":
    main()
