"""Rollout throughput: aha's ``fast`` KV-cache sampler against ``model.generate`` (the ``hf`` backend).

Batch of B arithmetic chat prompts (~24 tokens, left-padded), T new tokens per row, temperature 1.0.
EOS is made impossible (the stop id is outside the vocabulary), so every row of both backends produces
exactly T tokens and tokens/s = B·T / wall time. Backends run interleaved (A B B A ...), each rep timed;
the table shows the median (and min/max) over reps. Each ``--threads`` count (default: 1, then torch's
default, all cores) runs every size in turn. vLLM is reported only when ``import vllm`` works.

    .venv/bin/python benchmarks/generate.py                 # both sizes, B=64, T=128, 1 torch thread then all cores
    .venv/bin/python benchmarks/generate.py --quick         # 1m only, fewer reps
    .venv/bin/python benchmarks/generate.py --baseline-file /tmp/old_sampler.py   # A/B a sampler version
    AHA_FAST_DECODE=0 .venv/bin/python benchmarks/generate.py   # fast sampler's decode steps through the HF forward
    AHA_FAST_DECODE=0 AHA_DECODE_ATTN=0 .venv/bin/python benchmarks/generate.py   # ... with SDPA's flash kernel
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SIZES, build, gemm_peak, load, model_dims, summary  # noqa: E402
from aha.data.prompts import encode_prompts, render_prompt  # noqa: E402
from aha.rollout.sampler import SamplingParams, sample_fast, sample_hf  # noqa: E402
from aha.tasks import get_task  # noqa: E402


def load_sampler_file(path: str):
    spec = importlib.util.spec_from_file_location("baseline_sampler", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.sample_fast


def run_case(size: str, batch: int, new_tokens: int, reps: int, backends: dict, group: int = 1) -> dict:
    model, tok = build(size)
    model.eval()
    rows = get_task("arithmetic", digits=2).rows("train", batch // group, seed=0)
    texts = [render_prompt(tok, r["prompt"]) for r in rows for _ in range(group)]  # each prompt `group` times
    prompt_ids, prompt_mask = encode_prompts(tok, texts)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
    no_eos = [len(tok) + 7]  # outside the vocabulary: never sampled, so no row stops early
    times: dict[str, list[float]] = {name: [] for name in backends}

    def once(name):
        fn = backends[name]
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        out = fn(model, prompt_ids, prompt_mask, params, no_eos, tok.pad_token_id, gen)
        dt = time.perf_counter() - t
        assert out.shape == (batch, new_tokens), (name, tuple(out.shape))
        return dt

    for name in backends:  # warm-up
        once(name)
    order = list(backends)
    for r in range(reps):
        for name in order if r % 2 == 0 else order[::-1]:  # A B, B A, ...: cancels drift
            times[name].append(once(name))
    return {
        "size": size,
        "params": model_dims(model)["params"],
        "prompt_len": prompt_ids.size(1),
        "stats": {name: summary(ts) for name, ts in times.items()},
        "tokens": batch * new_tokens,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,19m", help=f"comma-separated, from {sorted(SIZES)}")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--group",
        type=int,
        default=1,
        help="rows per distinct prompt (GRPO's G; default 1: every prompt distinct); must divide --batch",
    )
    ap.add_argument("--quick", action="store_true", help="1m only, 3 reps, 64 new tokens")
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
    if args.quick:
        args.sizes, args.reps, args.new_tokens = "1m", 3, 64

    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads {args.threads!r}: comma-separated integers")
    backends = {"fast": sample_fast}
    if args.baseline_file:
        backends["baseline"] = load_sampler_file(args.baseline_file)
    if not args.no_hf:
        backends["hf"] = sample_hf

    default_threads = torch.get_num_threads()
    print(f"machine: {load()}")
    print(
        f"batch {args.batch} ({args.batch // args.group} distinct prompts × {args.group}), {args.new_tokens} new tokens"
        f" per row (EOS impossible), temperature 1.0, {args.reps} reps"
    )
    first, first_threads = None, ""  # the first thread count's results: compared with vLLM below
    for threads in thread_counts:
        torch.set_num_threads(threads if threads > 0 else default_threads)
        print(f"\n#### torch threads {torch.get_num_threads()}")
        print(f"fp32 GEMM peak (torch.mm 1024²): {gemm_peak() / 1e9:.1f} GFLOP/s")
        results = []
        for size in args.sizes.split(","):
            res = run_case(size.strip(), args.batch, args.new_tokens, args.reps, backends, args.group)
            results.append(res)
            print_case(res, torch.get_num_threads())
        if first is None:
            first, first_threads = results, plural(torch.get_num_threads(), "torch thread")
    vllm_python = Path(args.vllm_python)
    if args.vllm_python == "none":
        pass
    elif not vllm_python.is_file():
        print(f"\nvLLM-CPU: skipped ({vllm_python} not found; `make test-vllm` builds it)")
    elif args.group != 1:
        print("\nvLLM-CPU: skipped (generate_vllm.py runs distinct prompts only)")
    else:  # the same model and workload in vLLM's own venv (benchmarks/generate_vllm.py)
        for res in first:
            tps = vllm_tokens_per_s(vllm_python, res["size"], args.batch, args.new_tokens, args.reps)
            fast = res["tokens"] / res["stats"]["fast"]["median"]
            where = f"fast is {fast / tps:.2f}x vLLM-CPU" if tps else "vLLM run failed (see above)"
            print(f"\n== {res['size']} vLLM-CPU: {tps or float('nan'):.0f} tokens/s; {where} (aha at {first_threads})")
    print(f"machine at end: {load()}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def print_case(res: dict, threads: int) -> None:
    print(
        f"\n== {res['size']} ({res['params'] / 1e6:.2f} M params, prompt width {res['prompt_len']}), {plural(threads, 'thread')}"
    )
    print(f"{'backend':<10} {'tokens/s':>10} {'s (median)':>11} {'min':>8} {'max':>8}")
    for name, st in res["stats"].items():
        print(
            f"{name:<10} {res['tokens'] / st['median']:>10.0f} {st['median']:>11.3f} {st['min']:>8.3f} {st['max']:>8.3f}"
        )
    for other in ("hf", "baseline"):
        if other in res["stats"]:
            speedup = res["stats"][other]["median"] / res["stats"]["fast"]["median"]
            print(f"speed-up fast vs {other}: {speedup:.2f}x ({plural(threads, 'thread')})")


def vllm_tokens_per_s(python: Path, size: str, batch: int, new_tokens: int, reps: int) -> float | None:
    """Run benchmarks/generate_vllm.py under `python` (the vLLM venv); its `vllm_tokens_per_s=` line."""
    script = Path(__file__).with_name("generate_vllm.py")
    cmd = [str(python), str(script), "--size", size, "--batch", str(batch), "--new-tokens", str(new_tokens)]
    done = subprocess.run([*cmd, "--reps", str(reps)], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("vllm_tokens_per_s="):
            return float(line.split("=", 1)[1])
    print(done.stdout[-1500:], done.stderr[-1500:])
    return None


if __name__ == "__main__":
    main()
