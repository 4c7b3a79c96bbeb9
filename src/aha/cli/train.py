"""``aha train RECIPE.yaml``: GRPO (R1 phase 2) from a recipe, with ``--set`` overrides and ``--dry-run``."""

from __future__ import annotations

import argparse

from aha.cli import add_set_option

NAME = "train"
KIND = "grpo"


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``aha train`` and ``aha sft`` share."""
    p.add_argument("recipe", help="recipe YAML file (see recipes/), or an Open R1 / `trl grpo --config` YAML file")
    add_set_option(
        p,
        "override a recipe key (dotted path, YAML value), e.g. training.learning_rate=1e-5, model=tiny, "
        "dataset.task=arithmetic, rewards.correctness.value=2.0",
    )
    p.add_argument("--dry-run", action="store_true", help="validate everything and print the resolved config")
    p.add_argument("--out", default=None, help="run directory (default: training.output_dir of the recipe)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing aha run in the run directory")
    p.add_argument("--merge", action="store_true", help="LoRA: also save the merged model (as merge_lora: true)")
    p.add_argument("--no-plot", action="store_true", help="skip plots/ and report.md at the end")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="auto|PATH",
        help="continue a killed run from its newest complete checkpoint-<step>/ in the run directory (auto, the "
        "default) or from the checkpoint PATH; on a CPU at one thread (OMP_NUM_THREADS=1) bit-identical to a run that was never interrupted, with more threads equal up to float rounding",
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="train with GRPO from a recipe YAML (model, dataset, rewards, peft, training)",
        description="Train with GRPO as a recipe says. Recipes hold model, dataset, rewards, peft (LoRA), eval "
        "and GRPOConfig fields under training:. --dry-run validates it all without loading weights or Hub data.",
    )
    add_recipe_arguments(p)


def run_kind(args: argparse.Namespace, kind: str) -> int:
    from aha.workflows.recipe import dry_run_report, load_recipe, translated_line

    recipe = load_recipe(args.recipe, args.sets, kind=kind, out=args.out, merge=args.merge)
    if args.dry_run:
        print(dry_run_report(recipe), end="")  # an Open R1/TRL config's report starts with the line below
        return 0
    if recipe.translated is not None:
        from aha.console import console

        console.print(translated_line(recipe), markup=False, highlight=False, soft_wrap=True)
    from aha.workflows.run import run_recipe

    run_recipe(recipe, overwrite=args.overwrite, plot=not args.no_plot, resume=args.resume)
    return 0


def run(args: argparse.Namespace) -> int:
    return run_kind(args, KIND)
