"""``aha sample``: rejection sampling / distillation: n completions per prompt, verified, kept as SFT data."""

from __future__ import annotations

import argparse

NAME = "sample"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="rejection sampling: generate n completions per prompt, keep the verified ones as an SFT dataset",
        description="Generate --n completions per prompt with a model (a teacher for distillation, or the policy "
        "for rejection sampling), verify them with the task's verifier (built-in tasks, GSM8K/MATH files) or "
        "with --reward functions, and write the accepted ones as prompt/completion chat rows to --out, with "
        "the pass rate of every prompt in OUT.pass_rates.jsonl.",
    )
    p.add_argument("--model", required=True, help="model, run or adapter directory (or a Hub id)")
    p.add_argument(
        "--data", required=True, help="built-in task (arithmetic, arithmetic:digits=3) or a .jsonl/.json/.csv file"
    )
    p.add_argument("--out", required=True, help="output .jsonl (refused if it exists, unless --overwrite)")
    p.add_argument("--n", type=int, default=8, help="completions per prompt (default: 8)")
    p.add_argument("--keep", choices=("correct", "all"), default="correct", help="which completions to keep")
    p.add_argument("--max-per-prompt", type=int, default=None, help="keep at most K completions per prompt")
    p.add_argument("--min-pass-rate", type=float, default=0.0, help="keep prompts with pass rate >= this")
    p.add_argument("--max-pass-rate", type=float, default=1.0, help="keep prompts with pass rate <= this")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="completion length limit (default: 256)")
    p.add_argument("--limit", type=int, default=None, help="number of prompts (default: 100 of a task, a whole file)")
    p.add_argument("--split", default="train", help="a built-in task's split (default: train)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="generation batch size (default: 64)")
    p.add_argument(
        "--reward",
        dest="rewards",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="judge with these rewards (see `aha rewards list`) instead of the verifier",
    )
    p.add_argument("--min-reward", type=float, default=1.0, help="with --reward: accept when the sum is >= this")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from aha.sample import SampleConfig, check_out, run_sample
    from aha.train.logging import console

    cfg = SampleConfig(
        n=args.n,
        keep=args.keep,
        max_per_prompt=args.max_per_prompt,
        min_pass_rate=args.min_pass_rate,
        max_pass_rate=args.max_pass_rate,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        split=args.split,
        seed=args.seed,
        batch_size=args.batch_size,
        rewards=list(args.rewards),
        min_reward=args.min_reward,
    )
    cfg.validate()
    check_out(args.out, args.overwrite)  # before loading the model
    from aha.recipe_run import load_recipe_model

    model, tok = load_recipe_model(args.model, args.seed)
    summary = run_sample(model, tok, args.data, args.out, cfg, overwrite=args.overwrite)
    console.print(
        f"{summary['prompts']} prompts × {cfg.n}: {summary['accepted']} accepted "
        f"(mean pass rate {summary['mean_pass_rate']:.3f}); {summary['prompts_in_range']} prompts in the pass-rate "
        f"range; {summary['kept']} completions kept in {summary['out']} (pass rates: {summary['pass_rates']}); "
        f"{summary['seconds']:.0f} s"
    )
    return 0
