"""``aha demo``: tiny model → cold-start SFT → GRPO → held-out eval, offline."""

from __future__ import annotations

import argparse
from dataclasses import fields

NAME = "demo"


def add_parser(sub) -> None:
    from aha.workflows.demo import DemoConfig

    p = sub.add_parser(
        NAME,
        help="the R1 recipe in miniature: tiny model → cold-start SFT → GRPO → held-out eval",
        description="Build a tiny model, cold-start it with SFT, train it with GRPO and evaluate it on a "
        "held-out split, offline, in a few minutes on a CPU.",
    )
    defaults = DemoConfig()
    helps = {
        "out": "run directory (refused if it exists and is not empty, unless --overwrite)",
        "seed": "random seed for everything",
        "digits": "number of digits of the addition task",
        "guess_fraction": "fraction of cold-start traces that are quick guesses forgetting the carry",
        "sft_steps": "cold-start SFT optimiser steps",
        "grpo_steps": "GRPO optimiser steps",
        "threads": "torch CPU threads (0: default)",
    }
    for f in fields(DemoConfig):
        value = getattr(defaults, f.name)
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(value),
            default=value,
            dest=f.name,
            help=f"{helps.get(f.name, f.name.replace('_', ' '))} (default: {value})",
        )
    p.add_argument("--overwrite", action="store_true", help="replace an existing aha run in --out")


def run(args: argparse.Namespace) -> int:
    from aha.workflows.demo import DemoConfig, run_demo

    run_demo(DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)}), overwrite=args.overwrite)
    return 0
