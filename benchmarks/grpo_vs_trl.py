"""GRPO step time: aha's GRPOTrainer against TRL 1.16's, same model, data, rewards and hyper-parameters.

Cases = sizes × workloads:
  demo       the demo's GRPO phase: 2-digit arithmetic chat prompts (~24 tokens), 8 prompts × G=8,
             max_completion_length 40, temperature 1.0, loss dapo, beta 0, μ=1, lr 2e-5
  reasoning  ~32-token prompts (4-digit sums), 8 prompts × G=8, completions up to 128 tokens; an
             untrained model almost never samples EOS, so completions run to the cap (mean length shown)

Each tool runs in its own worker process (one per tool per case, so peak RSS is per tool). The worker
builds the model, then trains; a callback at the end of every optimizer step records the wall time since
the previous step ended and, after each chunk, pauses the worker until the parent says go. The parent
alternates the two workers A B B A A B ... so that load drift on the machine hits both tools alike.
Warm-up steps are run first and not counted.

    .venv/bin/python benchmarks/grpo_vs_trl.py              # both sizes, both workloads (~10 min)
    .venv/bin/python benchmarks/grpo_vs_trl.py --quick      # 1m, both workloads, few steps (< 2 min)
    .venv/bin/python benchmarks/grpo_vs_trl.py --sizes 1m --workloads demo --steps 2+8
    .venv/bin/python benchmarks/grpo_vs_trl.py --gradient-checkpointing on   # both trainers recompute

Gradient checkpointing is set explicitly in both configs (``--gradient-checkpointing``, default off): TRL's
GRPOConfig defaults it to True and aha's to False, so leaving it unset compares different settings.

The last two lines are ``ratio_vs_trl=`` (TRL s/step ÷ aha s/step) and ``floor_ratio=`` (aha s/step ÷ the
FLOP floor) for the reasoning workload at the largest size run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MARK = "@@bench "

WORKLOADS = {
    "demo": dict(digits=2, content="{q}", max_completion_length=40),
    "reasoning": dict(digits=4, content="Add {q}", max_completion_length=128),
}
HPARAMS = dict(
    num_generations=8,
    per_device_train_batch_size=64,  # 8 prompts × G=8, one optimizer step per generation batch
    gradient_accumulation_steps=1,
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    repetition_penalty=1.0,
    learning_rate=2e-5,
    lr_scheduler_type="constant",
    beta=0.0,
    loss_type="dapo",
    num_iterations=1,
    epsilon=0.2,
    scale_rewards="group",
    max_grad_norm=1.0,
    optim="adamw_torch",
    mask_truncated_completions=False,
    logging_steps=1,
    use_cpu=True,
    bf16=False,
    report_to=[],
    seed=0,
)


# ------------------------------------------------------------------------------------------- worker
def send(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


class Pacer:
    """Step-end hook shared by both tools: times steps, pauses between chunks, collects logs."""

    def __init__(self, warmup: int, chunk: int, total: int) -> None:
        self.warmup, self.chunk, self.total = warmup, chunk, total
        self.times: list[float] = []
        self.lengths: list[float] = []
        self.count = 0
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    def log(self, logs: dict) -> None:
        if "completions/mean_length" in logs:
            self.lengths.append(float(logs["completions/mean_length"]))

    def step_end(self) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.count += 1
        done_warmup = self.count == self.warmup
        if done_warmup or (self.count > self.warmup and (self.count - self.warmup) % self.chunk == 0):
            send({"times": self.times, "lengths": self.lengths, "count": self.count, "warmup": done_warmup})
            self.times, self.lengths = [], []
            if self.count < self.total:
                sys.stdin.readline()  # wait for the parent's go
        self.last = time.perf_counter()


def workload_dataset(wl: dict):
    """The workload's prompts: 2000 arithmetic problems worded as `wl["content"]`, with their answers."""
    from datasets import Dataset

    from aha.tasks import get_task

    rows = get_task("arithmetic", digits=wl["digits"]).rows("train", 2000, seed=0)
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": wl["content"].format(q=r["prompt"][-1]["content"])}],
                "answer": r["answer"],
            }
            for r in rows
        ]
    )


def worker(args) -> None:
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from _common import build
    from aha.rewards import get as get_reward

    wl = WORKLOADS[args.workload]
    model, tok = build(args.size)
    data = workload_dataset(wl)
    rewards = [get_reward("correctness"), get_reward("format")]
    total = args.warmup + args.steps
    pacer = Pacer(args.warmup, args.chunk, total)
    out_dir = tempfile.mkdtemp(prefix=f"bench_{args.tool}_")
    hp = dict(
        HPARAMS,
        output_dir=out_dir,
        max_steps=total,
        max_completion_length=wl["max_completion_length"],
        # set explicitly for both: TRL's GRPOConfig defaults to True, aha's to False
        gradient_checkpointing=args.gradient_checkpointing == "on",
    )
    send({"ready": True})
    sys.stdin.readline()
    if args.tool == "aha":
        os.environ["AHA_NO_PROGRESS"] = "1"
        from aha.train.config import GRPOConfig
        from aha.train.grpo import GRPOTrainer

        def on_log(state, row):
            pacer.log(row)
            pacer.step_end()

        cfg = GRPOConfig(save_steps=10**9, **hp)
        trainer = GRPOTrainer(model, rewards, cfg, data, processing_class=tok, callbacks=[on_log])
        pacer.start()
        trainer.train()
    else:
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        class CB(TrainerCallback):
            def on_train_begin(self, *a, **k):
                pacer.start()

            def on_log(self, args_, state, control, logs=None, **k):
                pacer.log(logs or {})

            def on_step_end(self, *a, **k):
                pass

        # logs are emitted after on_step_end; the pause happens at the next step's on_step_begin
        class Pause(TrainerCallback):
            def on_step_begin(self, args_, state, control, **k):
                if state.global_step > 0:
                    pacer.step_end()

            def on_train_end(self, args_, state, control, **k):
                pacer.step_end()

        cfg = GRPOConfig(save_strategy="no", disable_tqdm=True, shuffle_dataset=True, **hp)
        trainer = GRPOTrainer(
            model, rewards, args=cfg, train_dataset=data, processing_class=tok, callbacks=[CB(), Pause()]
        )
        trainer.train()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    send({"end": True, "peak_rss_mb": peak_kb / 1024})


# ------------------------------------------------------------------------------------------- parent
class Worker:
    def __init__(self, tool: str, size: str, workload: str, warmup: int, steps: int, chunk: int, threads: int, gc: str):
        cmd = [sys.executable, __file__, "--worker", tool, "--sizes", size, "--workloads", workload]
        cmd += ["--warmup", str(warmup), "--steps", str(steps), "--chunk", str(chunk), "--threads", str(threads)]
        cmd += ["--gradient-checkpointing", gc]
        env = dict(os.environ, AHA_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.tool = tool
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        self.log.seek(0)
        raise RuntimeError(f"{self.tool} worker died:\n{self.log.read()[-4000:]}")

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read()


def run_case(size: str, workload: str, warmup: int, steps: int, chunk: int, threads: int, gc: str) -> dict:
    import statistics

    from _common import build, model_dims, step_flops, summary

    tools = ("aha", "trl")
    workers = {}
    for t in tools:  # start one at a time: imports and set-up never overlap a timed chunk
        workers[t] = Worker(t, size, workload, warmup, steps, chunk, threads, gc)
        workers[t].read()  # ready
    times = {t: [] for t in tools}
    lengths = {t: [] for t in tools}
    for t in tools:  # warm-up
        workers[t].go()
    n_chunks = -(-steps // chunk)
    for c in range(n_chunks):
        for t in tools if c % 2 == 0 else tools[::-1]:  # A B B A ...
            msg = workers[t].go()
            times[t] += msg["times"]
            lengths[t] += msg["lengths"]
    res = {"size": size, "workload": workload}
    for t in tools:
        end = workers[t].read()
        workers[t].proc.wait(timeout=60)
        res[t] = {
            **summary(times[t]),
            "mean_length": statistics.mean(lengths[t]) if lengths[t] else float("nan"),
            "peak_rss_mb": end["peak_rss_mb"],
        }
    model, tok = build(size)
    dims = model_dims(model)
    from aha.data.prompts import encode_prompts, render_prompt
    from aha.tasks import get_task

    wl = WORKLOADS[workload]
    r = get_task("arithmetic", digits=wl["digits"]).rows("train", 64, seed=0)
    ids, mask = encode_prompts(
        tok,
        [
            render_prompt(tok, [{"role": "user", "content": wl["content"].format(q=x["prompt"][-1]["content"])}])
            for x in r
        ],
    )
    res["params"] = dims["params"]
    res["prompt_len"] = float(mask.sum(1).float().mean())
    comp = statistics.mean([res[t]["mean_length"] for t in tools])
    res["flops"] = step_flops(dims, 64, res["prompt_len"], comp)
    return res


def print_case(res: dict, peak: float) -> tuple[float, float]:
    floor = res["flops"]["total"] / peak
    print(
        f"\n== size {res['size']} ({res['params'] / 1e6:.2f} M params), workload {res['workload']}: 64 completions/step, "
        f"prompt ~{res['prompt_len']:.0f} tokens"
    )
    print(
        f"{'tool':<5} {'s/step med':>10} {'min':>7} {'max':>7} {'n':>3} {'gen tok/s':>9} {'mean len':>8} {'peak RSS MB':>11} {'× floor':>8}"
    )
    for t in ("aha", "trl"):
        r = res[t]
        tps = 64 * r["mean_length"] / r["median"]
        print(
            f"{t:<5} {r['median']:>10.3f} {r['min']:>7.3f} {r['max']:>7.3f} {r['n']:>3} {tps:>9.0f} {r['mean_length']:>8.1f} "
            f"{r['peak_rss_mb']:>11.0f} {r['median'] / floor:>8.1f}"
        )
    f = res["flops"]
    print(
        f"FLOP floor: {f['total'] / 1e9:.1f} GFLOP/step (generate {f['generate'] / 1e9:.1f} + train {f['train'] / 1e9:.1f}) "
        f"= {floor:.3f} s at {peak / 1e9:.1f} GFLOP/s"
    )
    ratio = res["trl"]["median"] / res["aha"]["median"]
    fr = res["aha"]["median"] / floor
    print(f"case ratio_vs_trl={ratio:.2f} floor_ratio={fr:.1f}")
    return ratio, fr


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,19m")
    ap.add_argument("--workloads", default="demo,reasoning")
    ap.add_argument(
        "--steps",
        default=None,
        help="WARMUP+TIMED steps per tool, e.g. 2+8; default 2+6 for 1m and 1+2 for larger sizes",
    )
    ap.add_argument(
        "--chunk", type=int, default=0, help="steps per interleaved chunk (default: 2, or 1 for larger sizes)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (0: torch's default); 1 is stable on a shared machine",
    )
    ap.add_argument(
        "--gradient-checkpointing",
        choices=["off", "on"],
        default="off",
        help="set identically in both trainers' configs (TRL's GRPOConfig defaults to on, aha's to off)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1m only, 1+2 steps (< 2 min)")
    ap.add_argument("--worker", choices=["aha", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        args.tool, args.size, args.workload = args.worker, args.sizes, args.workloads
        args.steps = int(args.steps)
        worker(args)
        return

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from _common import gemm_peak, load

    if args.quick:
        args.sizes, args.steps = "1m", "1+2"
    t0 = time.perf_counter()
    print(f"machine at start: {load()}")
    peak = gemm_peak()
    print(f"fp32 GEMM peak (torch.mm 1024², {torch.get_num_threads()} thread(s)): {peak / 1e9:.1f} GFLOP/s")
    print(f"gradient_checkpointing={args.gradient_checkpointing} (both trainers)")
    last = None
    for size in args.sizes.split(","):
        for workload in args.workloads.split(","):
            spec = args.steps or ("2+6" if size == "1m" else "1+2")
            warmup, steps = (int(x) for x in spec.split("+"))
            if warmup < 1 or steps < 1:
                raise SystemExit("--steps: need at least 1 warm-up and 1 timed step, e.g. 1+3")
            chunk = args.chunk or (2 if size == "1m" else 1)
            res = run_case(size, workload, warmup, steps, min(chunk, steps), args.threads, args.gradient_checkpointing)
            print(f"machine now: {load()}")
            ratios = print_case(res, peak)
            if workload == "reasoning" or last is None:
                last = ratios
    peak_end = gemm_peak()
    print(
        f"\nfp32 GEMM peak at end: {peak_end / 1e9:.1f} GFLOP/s; machine at end: {load()}; wall {time.perf_counter() - t0:.0f} s"
    )
    print(f"ratio_vs_trl={last[0]:.2f}")
    print(f"floor_ratio={last[1]:.1f}")


if __name__ == "__main__":
    main()
