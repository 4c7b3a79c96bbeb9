"""GRPO step time: aha's GRPOTrainer against TRL 1.16's, same model, data, rewards and hyper-parameters.

Models: the built-in tiny sizes (``--sizes 1m,19m``) or a model directory (``--model DIR``, replaces ``--sizes``;
e.g. SmolLM2-135M-Instruct at /tmp/smol/smol), optionally with the same ``peft.LoraConfig`` for both tools
(``--peft lora --lora-r 16``: r, α = 2r, all linear layers). ``--dtype float32|bfloat16|both``: fp32 weights in
both cases; bfloat16 passes ``bf16=True`` to both configs (mixed precision). A tool that refuses bf16 here is
reported as n/a with its reason.

Workloads (``--workloads``; default demo,reasoning for sizes, smoltldr for a model directory):
  demo       the demo's GRPO phase: 2-digit arithmetic chat prompts (~24 tokens), 8 prompts × G=8,
             max_completion_length 40, temperature 1.0, loss dapo, beta 0, μ=1, lr 2e-5
  reasoning  ~32-token prompts (4-digit sums), 8 prompts × G=8, completions up to 128 tokens; an
             untrained model almost never samples EOS, so completions run to the cap (mean length shown)
  smoltldr   recipes/smoltldr.yaml's setting (the LLM course's exercise): the built-in summarize task's prompts
             (generated news stories, no Hub data), the length reward (ideal 50 characters), G=8,
             per_device_train_batch_size 8 × gradient_accumulation_steps 2 (2 prompts × 8 = 16 completions per
             optimizer step), max_completion_length 96, lr 2e-5
Prompts are chat messages: both tools render them with the model's chat template.

Each tool runs in its own worker process (one per tool per case, so peak RSS is per tool). The worker
builds the model, then trains; a callback at the end of every optimizer step records the wall time since
the previous step ended and, after each chunk, pauses the worker until the parent says go. The parent
alternates the two workers A B B A A B ... so that load drift on the machine hits both tools alike.
Warm-up steps are run first and not counted.

    .venv/bin/python benchmarks/grpo_vs_trl.py              # both sizes, both workloads (~10 min)
    .venv/bin/python benchmarks/grpo_vs_trl.py --quick      # 1m, both workloads, few steps (< 2 min)
    .venv/bin/python benchmarks/grpo_vs_trl.py --sizes 1m --workloads demo --steps 2+8
    .venv/bin/python benchmarks/grpo_vs_trl.py --gradient-checkpointing on   # both trainers recompute
    .venv/bin/python benchmarks/grpo_vs_trl.py --model /tmp/smol/smol --peft lora --dtype both

Gradient checkpointing is set explicitly in both configs (``--gradient-checkpointing``, default off): TRL's
GRPOConfig defaults it to True and aha's to False, so leaving it unset compares different settings.

The FLOP floor (``_common.step_flops``) is shown at the fp32 and the bf16 torch.mm peak measured at the start;
``× floor`` uses the peak of the case's dtype. The last lines are ``floor_ratio=`` (aha s/step ÷ the FLOP floor)
and then ``ratio_vs_trl=`` (TRL s/step ÷ aha s/step), one of each per dtype, for the last reasoning or smoltldr
case of that dtype (else its first case).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MARK = "@@bench "
TOOLS = ("aha", "trl")
HEADLINE = ("reasoning", "smoltldr")  # the workloads whose ratios end the output

# task: the built-in task the prompts come from; rewards: (registered reward, its parameters);
# hparams: overrides of HPARAMS
WORKLOADS = {
    "demo": dict(
        task="arithmetic",
        digits=2,
        content="{q}",
        max_completion_length=40,
        rewards=[("correctness", {}), ("format", {})],
        hparams={},
    ),
    "reasoning": dict(
        task="arithmetic",
        digits=4,
        content="Add {q}",
        max_completion_length=128,
        rewards=[("correctness", {}), ("format", {})],
        hparams={},
    ),
    "smoltldr": dict(  # recipes/smoltldr.yaml's training section (see the module docstring)
        task="summarize",
        max_completion_length=96,
        rewards=[("length", {"ideal_length": 50, "unit": "characters"})],
        hparams=dict(per_device_train_batch_size=8, gradient_accumulation_steps=2),
    ),
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


def completions_per_step(wl: dict) -> int:
    """Completions generated and trained on per optimizer step: per-device batch × gradient accumulation."""
    hp = dict(HPARAMS, **wl.get("hparams", {}))
    return hp["per_device_train_batch_size"] * hp["gradient_accumulation_steps"]


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
    """The workload's 2000 prompts (chat messages) as a ``datasets.Dataset``.

    arithmetic: problems worded as `wl["content"]`, with an ``answer`` column for the correctness reward.
    summarize: the task's own prompts only; its ``ideal_length`` column is left out, as it would reach the length
    reward as a keyword and collide with the reward's own ``ideal_length`` parameter."""
    from datasets import Dataset

    from aha.tasks import get_task

    task = wl.get("task", "arithmetic")
    if task == "summarize":
        rows = get_task("summarize").rows("train", 2000, seed=0)
        return Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
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


def mean_prompt_len(tok, data, n: int = 64) -> float:
    """Mean prompt length in tokens (chat template applied) over the dataset's first `n` prompts."""
    from aha.data.prompts import encode_prompts, render_prompt

    _, mask = encode_prompts(tok, [render_prompt(tok, p) for p in data[:n]["prompt"]])
    return float(mask.sum(1).float().mean())


def worker(args) -> None:
    """One tool on one case; any failure is sent to the parent as ``{"error": ...}`` (it decides what it means)."""
    try:
        run_worker(args)
    except Exception as e:  # noqa: BLE001 - reported, not swallowed: the parent prints it or raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        send({"error": f"{type(e).__name__}: {first}"[:400]})


def run_worker(args) -> None:
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from _common import build, load_dir, lora_config, model_dims
    from aha.rewards import get as get_reward

    wl = WORKLOADS[args.workload]
    # fp32 weights for both dtypes: bf16=True is mixed precision over fp32 master weights
    model, tok = load_dir(args.model) if args.model else build(args.size)
    data = workload_dataset(wl)
    rewards = [get_reward(name, **params) for name, params in wl["rewards"]]
    peft_config = lora_config(args.lora_r) if args.peft == "lora" else None
    total = args.warmup + args.steps
    pacer = Pacer(args.warmup, args.chunk, total)
    out_dir = tempfile.mkdtemp(prefix=f"bench_{args.tool}_")
    hp = dict(
        HPARAMS,
        **wl["hparams"],
        output_dir=out_dir,
        max_steps=total,
        max_completion_length=args.completion_length or wl["max_completion_length"],
        bf16=args.dtype == "bfloat16",
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
        trainer = GRPOTrainer(
            model, rewards, cfg, data, processing_class=tok, peft_config=peft_config, callbacks=[on_log]
        )
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

        # logs are emitted after on_step_end; the pause happens at the next step's on_step_begin
        # (called once per optimizer step, at its first micro-batch)
        class Pause(TrainerCallback):
            def on_step_begin(self, args_, state, control, **k):
                if state.global_step > 0:
                    pacer.step_end()

            def on_train_end(self, args_, state, control, **k):
                pacer.step_end()

        cfg = GRPOConfig(save_strategy="no", disable_tqdm=True, shuffle_dataset=True, **hp)
        trainer = GRPOTrainer(
            model,
            rewards,
            args=cfg,
            train_dataset=data,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[CB(), Pause()],
        )
        trainer.train()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    send(
        {
            "end": True,
            "peak_rss_mb": peak_kb / 1024,
            "dims": model_dims(trainer.model),
            "prompt_len": mean_prompt_len(tok, data),
        }
    )


# ------------------------------------------------------------------------------------------- parent
class Worker:
    def __init__(self, tool: str, case: dict, warmup: int, steps: int, chunk: int, opts) -> None:
        cmd = [sys.executable, __file__, "--worker", tool, "--workloads", case["workload"], "--dtype", case["dtype"]]
        cmd += ["--model", case["model"]] if case["model"] else ["--sizes", case["size"]]
        cmd += ["--warmup", str(warmup), "--steps", str(steps), "--chunk", str(chunk), "--threads", str(opts.threads)]
        cmd += ["--gradient-checkpointing", opts.gradient_checkpointing, "--peft", opts.peft]
        cmd += ["--lora-r", str(opts.lora_r), "--completion-length", str(opts.completion_length)]
        env = dict(os.environ, AHA_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.tool = tool
        self.error: str | None = None
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                msg = json.loads(line[len(MARK) :])
                if "error" in msg:
                    self.error = msg["error"]
                    self.proc.wait(timeout=60)
                return msg
        self.log.seek(0)
        raise RuntimeError(f"{self.tool} worker died:\n{self.log.read()[-4000:]}")

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read()

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]


def run_case(case: dict, warmup: int, steps: int, chunk: int, opts) -> dict:
    """Both tools on one case (model × workload × dtype), interleaved; a tool that fails in bfloat16 is n/a."""
    workers: dict[str, Worker] = {}
    try:
        return interleave(workers, case, warmup, steps, chunk, opts)
    finally:  # on an error, no worker is left training on its own
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


def interleave(workers: dict, case: dict, warmup: int, steps: int, chunk: int, opts) -> dict:
    for t in TOOLS:  # start one at a time: imports and set-up never overlap a timed chunk
        workers[t] = Worker(t, case, warmup, steps, chunk, opts)
        workers[t].read()  # ready (or an error while loading)
    times: dict[str, list[float]] = {t: [] for t in TOOLS}
    lengths: dict[str, list[float]] = {t: [] for t in TOOLS}

    def alive() -> list[str]:
        return [t for t in TOOLS if workers[t].error is None]

    for t in alive():  # warm-up
        workers[t].go()
    n_chunks = -(-steps // chunk)
    for c in range(n_chunks):
        for t in alive() if c % 2 == 0 else alive()[::-1]:  # A B B A ...
            msg = workers[t].go()
            times[t] += msg.get("times", [])
            lengths[t] += msg.get("lengths", [])
    from _common import step_flops, summary

    res = dict(case, rows=completions_per_step(WORKLOADS[case["workload"]]))
    ends = {t: workers[t].read() for t in alive()}
    for t in TOOLS:
        w = workers[t]
        if w.error is not None:
            if case["dtype"] != "bfloat16":  # fp32 must run: a failure there is a broken benchmark
                raise RuntimeError(f"{t} worker failed: {w.error}\n{w.stderr_tail()}")
            res[t] = {"error": w.error}
            continue
        w.proc.wait(timeout=60)
        res[t] = {
            **summary(times[t]),
            "mean_length": statistics.mean(lengths[t]) if lengths[t] else float("nan"),
            "peak_rss_mb": ends[t]["peak_rss_mb"],
        }
        res.setdefault("dims", ends[t]["dims"])  # the first tool's; both train the same model
        res.setdefault("prompt_len", ends[t]["prompt_len"])
    ok = [t for t in TOOLS if "error" not in res[t]]
    if ok:
        comp = statistics.mean([res[t]["mean_length"] for t in ok])
        group = HPARAMS["num_generations"]
        res["flops"] = step_flops(res["dims"], res["rows"], res["prompt_len"], comp, group)
    return res


def case_title(res: dict) -> str:
    d = res.get("dims")
    params = f"{d['params'] / 1e6:.2f} M params" if d else "params n/a"
    if d and d.get("adapter"):
        params += f", LoRA r{res['lora_r']}: {d['trainable'] / 1e6:.2f} M trainable"
    what = f"model {res['model']}" if res["model"] else f"size {res['size']}"
    prompt = f"prompt ~{res['prompt_len']:.0f} tokens" if "prompt_len" in res else "prompt n/a"
    return (
        f"\n== {what} ({params}), workload {res['workload']}, {res['dtype']}: {res['rows']} completions/step, {prompt}"
    )


def print_case(res: dict, peaks: dict[str, float | None]) -> tuple[float | None, float | None]:
    """The case's table; returns (ratio_vs_trl, floor_ratio), None where a tool did not run."""
    print(case_title(res))
    peak = peaks[res["dtype"]]
    floor = res["flops"]["total"] / peak if "flops" in res and peak else None
    print(
        f"{'tool':<5} {'s/step med':>10} {'min':>7} {'max':>7} {'n':>3} {'gen tok/s':>9} {'mean len':>8} {'peak RSS MB':>11} {'× floor':>8}"
    )
    for t in TOOLS:
        r = res[t]
        if "error" in r:
            print(f"{t:<5} {'n/a':>10}  ({r['error']})")
            continue
        tps = res["rows"] * r["mean_length"] / r["median"]
        xf = f"{r['median'] / floor:>8.1f}" if floor else f"{'n/a':>8}"
        print(
            f"{t:<5} {r['median']:>10.3f} {r['min']:>7.3f} {r['max']:>7.3f} {r['n']:>3} {tps:>9.0f} {r['mean_length']:>8.1f} "
            f"{r['peak_rss_mb']:>11.0f} {xf}"
        )
    if "flops" in res:
        f = res["flops"]
        at = [f"{f['total'] / p:.3f} s at the {d} peak {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items() if p]
        print(
            f"FLOP floor: {f['total'] / 1e9:.1f} GFLOP/step (generate {f['generate'] / 1e9:.1f} + train "
            f"{f['train'] / 1e9:.1f}) = {'; '.join(at)}"
        )
    ok = all("error" not in res[t] for t in TOOLS)
    ratio = res["trl"]["median"] / res["aha"]["median"] if ok else None
    fr = res["aha"]["median"] / floor if floor and "error" not in res["aha"] else None
    print(f"case ratio_vs_trl={fmt(ratio, 2)} floor_ratio={fmt(fr, 1)}")
    return ratio, fr


def fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def reason_na(res: dict) -> str:
    """Why a case's ratio is n/a: the failing tools' errors."""
    return "; ".join(f"{t}: {res[t]['error']}" for t in TOOLS if "error" in res[t])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,19m", help="built-in tiny sizes (_common.SIZES); ignored with --model")
    ap.add_argument("--model", default=None, help="a model directory (e.g. /tmp/smol/smol); replaces --sizes")
    ap.add_argument("--peft", choices=["none", "lora"], default="none", help="lora: the same LoraConfig for both")
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank (α = 2r, all linear layers); default 16")
    ap.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "both"],
        default="float32",
        help="bfloat16: bf16=True in both configs (fp32 master weights); both: float32 then bfloat16",
    )
    ap.add_argument(
        "--workloads", default=None, help=f"from {sorted(WORKLOADS)}; default demo,reasoning (smoltldr with --model)"
    )
    ap.add_argument(
        "--steps",
        default=None,
        help="WARMUP+TIMED steps per tool, e.g. 2+8; default 2+6 for 1m, 1+2 for 19m, 1+4 for --model",
    )
    ap.add_argument(
        "--chunk", type=int, default=0, help="steps per interleaved chunk (default: 2, or 1 for larger models)"
    )
    ap.add_argument(
        "--completion-length",
        type=int,
        default=0,
        help="max_completion_length for both tools instead of the workload's (0: the workload's); for smoke runs",
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
    ap.add_argument("--quick", action="store_true", help="smoke run: 1m only (or --model), 1+2 steps (< 2 min)")
    ap.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.workloads is None:
        args.workloads = "smoltldr" if args.model else "demo,reasoning"
    workloads = [w.strip() for w in args.workloads.split(",")]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"--workloads: unknown workload {w!r}; choose from {sorted(WORKLOADS)}")
    if args.lora_r < 1:
        ap.error(f"--lora-r {args.lora_r}: must be >= 1")
    if args.completion_length < 0:
        ap.error(f"--completion-length {args.completion_length}: must be >= 1 (or 0: the workload's)")

    if args.worker:
        args.tool, args.size, args.workload = args.worker, args.sizes, args.workloads
        args.steps = int(args.steps)
        worker(args)
        return

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from _common import SIZES, bf16_refused, dtypes, gemm_peak, load

    if args.model and not Path(args.model).is_dir():
        ap.error(f"--model {args.model!r}: not a directory (give a model directory, e.g. /tmp/smol/smol)")
    if args.quick:
        args.sizes, args.steps = "1m", "1+2"
    sizes = [s.strip() for s in args.sizes.split(",")]
    if not args.model:
        for s in sizes:
            if s not in SIZES:
                ap.error(f"--sizes: unknown size {s!r}; choose from {sorted(SIZES)}")
    run_dtypes = dtypes(args.dtype)
    t0 = time.perf_counter()
    print(f"machine at start: {load()}")
    refused = bf16_refused()
    peaks: dict[str, float | None] = {
        "float32": gemm_peak(),
        "bfloat16": None if refused else gemm_peak(dtype=torch.bfloat16),
    }
    n = torch.get_num_threads()
    print(f"fp32 GEMM peak (torch.mm 1024², {n} thread(s)): {peaks['float32'] / 1e9:.1f} GFLOP/s")
    bf16_peak = f"{peaks['bfloat16'] / 1e9:.1f} GFLOP/s" if peaks["bfloat16"] else f"n/a ({refused})"
    print(f"bf16 GEMM peak (torch.mm 1024², {n} thread(s)): {bf16_peak}")
    print(f"gradient_checkpointing={args.gradient_checkpointing} (both trainers)")
    if args.peft == "lora":
        print(f"peft: LoRA r={args.lora_r}, alpha={2 * args.lora_r}, target_modules=all-linear (both trainers)")
    if args.completion_length:
        print(f"max_completion_length={args.completion_length} for every workload (--completion-length)")
    headline: dict[str, tuple] = {}
    for model in [args.model] if args.model else sizes:
        for workload in workloads:
            for dtype in run_dtypes:
                tiny = not args.model and model == "1m"
                spec = args.steps or ("2+6" if tiny else "1+4" if args.model else "1+2")
                try:
                    warmup, steps = (int(x) for x in spec.split("+"))
                except ValueError:
                    raise SystemExit(f"--steps {spec!r}: WARMUP+TIMED, e.g. 1+3") from None
                if warmup < 1 or steps < 1:
                    raise SystemExit("--steps: need at least 1 warm-up and 1 timed step, e.g. 1+3")
                chunk = args.chunk or (2 if tiny else 1)
                case = dict(
                    model=args.model,
                    size=None if args.model else model,
                    workload=workload,
                    dtype=dtype,
                    lora_r=args.lora_r,
                )
                res = run_case(case, warmup, steps, min(chunk, steps), args)
                print(f"machine now: {load()}")
                ratios = print_case(res, peaks)
                if workload in HEADLINE or dtype not in headline:
                    headline[dtype] = (*ratios, reason_na(res))
    peak_end = gemm_peak()
    print(
        f"\nfp32 GEMM peak at end: {peak_end / 1e9:.1f} GFLOP/s; machine at end: {load()}; wall {time.perf_counter() - t0:.0f} s"
    )
    for dtype, (_, fr, why) in headline.items():
        print(f"floor_ratio={fmt(fr, 1)} dtype={dtype}" + (f" ({why})" if fr is None else ""))
    for dtype, (ratio, _, why) in headline.items():
        print(f"ratio_vs_trl={fmt(ratio, 2)} dtype={dtype}" + (f" ({why})" if ratio is None else ""))


if __name__ == "__main__":
    main()
