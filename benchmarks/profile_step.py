"""Where one aha GRPO step spends its time and memory: generation, the loss forward, backward, optimiser.

Builds aha's GRPOTrainer exactly as ``grpo_vs_trl.py`` does (same model, data, rewards, hyper-parameters),
then runs the phases of an optimizer step by hand, timing each one and recording the peak RSS of each
phase (Linux: ``VmHWM`` of /proc/self/status, reset before every phase through /proc/self/clear_refs).

    .venv/bin/python benchmarks/profile_step.py --size 19m --workload reasoning --steps 1+2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rss_mb() -> tuple[float, float]:
    """(current, peak since the last reset) resident set size in MB."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="19m")
    ap.add_argument("--workload", default="reasoning")
    ap.add_argument("--steps", default="1+2", help="WARMUP+TIMED")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from _common import build, load
    from aha.rewards import get as get_reward
    from aha.train.config import GRPOConfig
    from aha.train.grpo import GRPOTrainer
    from grpo_vs_trl import HPARAMS, WORKLOADS, workload_dataset

    os.environ["AHA_NO_PROGRESS"] = "1"
    wl = WORKLOADS[args.workload]
    model, tok = build(args.size)
    data = workload_dataset(wl)
    hp = dict(
        HPARAMS, output_dir=tempfile.mkdtemp(prefix="profile_"), max_completion_length=wl["max_completion_length"]
    )
    cfg = GRPOConfig(save_steps=10**9, max_steps=100, **hp)
    trainer = GRPOTrainer(model, [get_reward("correctness"), get_reward("format")], cfg, data, processing_class=tok)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    warmup, timed = (int(x) for x in args.steps.split("+"))
    print(f"machine: {load()}; rss at start {rss_mb()[0]:.0f} MB")
    phases = ("generate+score", "loss forward", "backward", "optimizer")
    times: dict[str, list[float]] = {k: [] for k in phases}
    peaks: dict[str, float] = {k: 0.0 for k in phases}
    lengths = []
    for step in range(warmup + timed):
        rec = step >= warmup
        reset_peak()
        t0 = time.perf_counter()
        trainer.model.train()
        out = trainer.batches.generate_and_score(trainer.batches.next_rows(cfg.prompts_per_generation))
        batch = out.batch
        t1 = time.perf_counter()
        p1 = rss_mb()[1]
        reset_peak()
        num_items = float(batch["completion_mask"].sum())
        loss, _ = trainer.compute_loss(batch, num_items)
        t2 = time.perf_counter()
        p2 = rss_mb()[1]
        reset_peak()
        loss.backward()
        t3 = time.perf_counter()
        p3 = rss_mb()[1]
        reset_peak()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        p4 = rss_mb()[1]
        del loss
        lengths.append(float(batch["completion_mask"].sum(1).float().mean()))
        if rec:
            for k, dt, pk in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), (p1, p2, p3, p4)):
                times[k].append(dt)
                peaks[k] = max(peaks[k], pk)
    total = sum(statistics.median(v) for v in times.values())
    print(f"size {args.size}, workload {args.workload}, {timed} timed steps, mean completion length {lengths[-1]:.1f}")
    print(f"{'phase':<16} {'s (median)':>10} {'share':>6} {'peak RSS MB':>11}")
    for k in phases:
        med = statistics.median(times[k])
        print(f"{k:<16} {med:>10.3f} {med / total:>6.0%} {peaks[k]:>11.0f}")
    print(f"{'total':<16} {total:>10.3f}")
    print(f"machine at end: {load()}")


if __name__ == "__main__":
    main()
