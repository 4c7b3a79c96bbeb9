"""Reward curve: aha's GRPOTrainer against TRL 1.16's over the demo's GRPO phase, from the same cold-start weights.

1. build the demo's tiny model and run its cold-start SFT once with aha (``--sft-steps``, default as the demo);
   the weights go to a temporary directory;
2. from those weights run ``--steps`` GRPO steps with aha and with TRL, each in its own worker process, one
   after the other: the demo's data (2-digit sums), rewards (correctness + format) and GRPO settings
   (8 prompts × G=8, max_completion_length 40, temperature 1, beta 0, lr 2e-5 constant), which are also
   ``grpo_vs_trl.py``'s demo workload (its ``HPARAMS``), gradient checkpointing off for both, logging every step;
3. plot the mean reward per step of both (raw, light; 10-step moving average, bold) and print the mean reward
   over steps 1-20 and over the last 50 steps, and each run's wall time.

    .venv/bin/python benchmarks/reward_curve.py                 # 400 SFT + 2 × 200 GRPO steps (~10 min)
    .venv/bin/python benchmarks/reward_curve.py --steps 100 --sft-steps 200 --out /tmp/curve.png

The last line is ``reward_last50 aha=<x> trl=<y>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WINDOW = 10  # moving-average window (steps)
TOOLS = ("aha", "trl")


def demo_stages() -> dict:
    """The demo pipeline (recipes/demo.yaml) as `aha demo` runs it: its model and its two stages' settings."""
    from aha.workflows.demo import RECIPE
    from aha.workflows.pipeline import build_stages, plan, read_pipeline

    raw = read_pipeline(RECIPE)
    sft, grpo = plan(raw, build_stages(raw))
    return {"model": raw["model"], "sft": sft, "grpo": grpo}


def demo_rows(demo: dict) -> list[dict]:
    """The demo's GRPO prompts: its GRPO stage's dataset."""
    from aha.data.load import load_rows

    return load_rows(demo["grpo"]["dataset"])


# ------------------------------------------------------------------------------------------- SFT
def cold_start(sft_steps: int, out_dir: Path) -> float:
    """The demo's cold-start stage (tiny model + SFT, its settings but `sft_steps`), saved to `out_dir`.
    Returns the wall time."""
    import torch

    from aha.data.load import load_rows
    from aha.models.loading import load_recipe_model, save_model
    from aha.train.sft import SFTConfig, SFTTrainer

    demo = demo_stages()
    training = demo["sft"]["training"]
    t0 = time.perf_counter()
    torch.manual_seed(training["seed"])
    model, tok = load_recipe_model(demo["model"], training["seed"])
    sft_cfg = SFTConfig(**{**training, "max_steps": sft_steps, "output_dir": str(out_dir)})
    rows = load_rows(demo["sft"]["dataset"])
    state = SFTTrainer(model, sft_cfg, rows, tok, description="cold-start SFT").train()
    save_model(model, tok, out_dir)
    print(
        f"cold-start SFT: {sft_steps} steps, last loss {[r for r in state.log_history if 'loss' in r][-1]['loss']:.3f}, {time.perf_counter() - t0:.0f} s"
    )
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- worker
def worker(tool: str, model_dir: str, steps: int, threads: int, result: str) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aha.rewards import get as get_reward
    from grpo_vs_trl import HPARAMS

    demo = demo_stages()
    grpo = demo["grpo"]["training"]
    torch.manual_seed(grpo["seed"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = Dataset.from_list(demo_rows(demo))
    rewards = [get_reward("correctness"), get_reward("format")]
    out_dir = tempfile.mkdtemp(prefix=f"reward_curve_{tool}_")
    hp = dict(
        HPARAMS,
        output_dir=out_dir,
        max_steps=steps,
        max_completion_length=grpo["max_completion_length"],
        gradient_checkpointing=False,
        seed=grpo["seed"],
    )
    # the demo's GRPO settings are grpo_vs_trl.py's demo workload; fail loudly if either drifts
    keys = ("learning_rate", "num_generations", "per_device_train_batch_size", "temperature", "beta")
    demo_hp = {k: grpo[k] for k in keys}
    assert all(hp[k] == v for k, v in demo_hp.items()), (demo_hp, hp)
    t0 = time.perf_counter()
    if tool == "aha":
        os.environ["AHA_NO_PROGRESS"] = "1"
        from aha.train.config import GRPOConfig
        from aha.train.grpo import GRPOTrainer

        trainer = GRPOTrainer(model, rewards, GRPOConfig(save_steps=10**9, **hp), data, processing_class=tok)
        history = trainer.train().log_history
    else:
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(save_strategy="no", disable_tqdm=True, shuffle_dataset=True, **hp)
        trainer = GRPOTrainer(model, rewards, args=args, train_dataset=data, processing_class=tok)
        trainer.train()
        history = trainer.state.log_history
    wall = time.perf_counter() - t0
    shutil.rmtree(out_dir, ignore_errors=True)
    reward = {int(r["step"]): float(r["reward"]) for r in history if "reward" in r and "step" in r}
    length = {int(r["step"]): float(r["completions/mean_length"]) for r in history if "completions/mean_length" in r}
    steps_seen = sorted(reward)
    if steps_seen != list(range(1, steps + 1)):
        raise RuntimeError(f"{tool}: expected a reward at every step 1..{steps}, got {len(steps_seen)} steps")
    out = {"reward": [reward[s] for s in steps_seen], "length": [length.get(s, float("nan")) for s in steps_seen]}
    Path(result).write_text(json.dumps(dict(out, wall=wall)))


def run_worker(tool: str, model_dir: Path, steps: int, threads: int, tmp: Path) -> dict:
    result = tmp / f"{tool}.json"
    cmd = [sys.executable, __file__, "--worker", tool, "--model", str(model_dir), "--result", str(result)]
    cmd += ["--steps", str(steps), "--threads", str(threads)]
    env = dict(os.environ, AHA_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{tool} worker failed (exit {proc.returncode}):\n{log.read()[-4000:]}")
    return json.loads(result.read_text())


# ------------------------------------------------------------------------------------------- report
def moving_average(xs: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` steps (shorter at the start)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def plot(res: dict, steps: int, sft_steps: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"aha": "tab:blue", "trl": "tab:orange"}
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    for t in TOOLS:
        r = res[t]["reward"]
        xs = list(range(1, len(r) + 1))
        ax.plot(xs, r, color=colors[t], alpha=0.25, linewidth=1)
        label = f"{t} ({WINDOW}-step mean; last 50: {mean(r[-50:]):.3f}, {res[t]['wall']:.0f} s)"
        ax.plot(xs, moving_average(r, WINDOW), color=colors[t], linewidth=2.5, label=label)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward per step (correctness + format)")
    ax.set_title(
        f"Demo task: aha vs TRL GRPOTrainer from the same cold start ({sft_steps} SFT steps)\n"
        "8 prompts × G=8, max_completion_length 40, temperature 1, beta 0, lr 2e-5; light: raw per step",
        fontsize=10,
    )
    ax.set_xlim(1, steps)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="GRPO steps per tool (default 200)")
    ap.add_argument("--sft-steps", type=int, default=None, help="cold-start SFT steps (default: the demo's, 400)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads per tool (0: torch's default); runs are sequential"
    )
    ap.add_argument("--out", default=str(HERE / "reward_curve.png"), help="PNG path")
    ap.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")

    if args.worker:
        worker(args.worker, args.model, args.steps, args.threads, args.result)
        return

    import torch

    from _common import load

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sft_steps = demo_stages()["sft"]["training"]["max_steps"] if args.sft_steps is None else args.sft_steps
    t0 = time.perf_counter()
    print(f"machine at start: {load()}")
    with tempfile.TemporaryDirectory(prefix="reward_curve_") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = tmp / "sft"
        cold_start(sft_steps, model_dir)
        res = {}
        for t in TOOLS:
            res[t] = run_worker(t, model_dir, args.steps, args.threads, tmp)
            print(f"{t}: {args.steps} GRPO steps in {res[t]['wall']:.0f} s; machine now: {load()}")
    out = Path(args.out)
    plot(res, args.steps, sft_steps, out)

    first = min(20, args.steps)
    print(f"\n== reward per step, demo task, {args.steps} GRPO steps from a {sft_steps}-step cold start")
    print(f"{'tool':<5} {f'steps 1-{first}':>11} {'last 50':>8} {'mean len':>8} {'wall s':>7} {'s/step':>7}")
    for t in TOOLS:
        r = res[t]
        print(
            f"{t:<5} {mean(r['reward'][:first]):>11.3f} {mean(r['reward'][-50:]):>8.3f} "
            f"{mean(r['length'][-50:]):>8.1f} {r['wall']:>7.0f} {r['wall'] / args.steps:>7.2f}"
        )
    print("(mean len: completion tokens over the last 50 steps; wall: trainer set-up + train())")
    print(f"plot: {out}; total wall {time.perf_counter() - t0:.0f} s; machine at end: {load()}")
    print(f"reward_last50 aha={mean(res['aha']['reward'][-50:]):.3f} trl={mean(res['trl']['reward'][-50:]):.3f}")


if __name__ == "__main__":
    main()
