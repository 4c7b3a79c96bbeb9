"""``aha sft RECIPE.yaml``: supervised fine-tuning (R1 phase 1, the cold start) from a recipe."""

from __future__ import annotations

import argparse

from aha.cli.train import add_recipe_arguments, run_kind

NAME = "sft"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="supervised fine-tuning (cold start) from a recipe YAML on prompt + completion rows",
        description="Fine-tune on prompt + completion rows (e.g. a built-in task's sft split) as a recipe says: "
        "model, dataset, optional peft and eval, SFTConfig fields under training:.",
    )
    add_recipe_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_kind(args, "sft")
