"""``aha pipeline RECIPE.yaml``: several stages (sft, grpo, sample) in one config, each from the last's model."""

from __future__ import annotations

import argparse

from aha.cli import add_set_option

NAME = "pipeline"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="run a multi-stage recipe (cold-start SFT → GRPO → rejection sampling → SFT → GRPO), resumable",
        description="Run the stages of a pipeline recipe in order, each starting from the previous stage's model "
        "(a sample stage's output is the next SFT stage's dataset), into OUT/<i>-<name>/, with the held-out "
        "accuracy after every stage in OUT/summary.json. Re-running on the same OUT resumes at the first "
        "unfinished stage.",
    )
    p.add_argument("recipe", help="pipeline YAML file with a stages: list (see recipes/r1-pipeline-tiny.yaml)")
    add_set_option(
        p,
        "override a key: stages.<name|index|*>.<key>=value (e.g. stages.*.training.max_steps=2) or a "
        "top-level one (eval.samples=1)",
    )
    p.add_argument("--out", default=None, help="pipeline directory (default: runs/<recipe name>)")
    p.add_argument("--dry-run", action="store_true", help="validate every stage and print the resolved settings")
    p.add_argument("--overwrite", action="store_true", help="start over: delete an existing pipeline directory")
    p.add_argument("--no-plot", action="store_true", help="skip each stage's plots/ and report.md")


def run(args: argparse.Namespace) -> int:
    from aha.workflows.pipeline import dry_run_report, run_pipeline

    if args.dry_run:
        print(dry_run_report(args.recipe, args.sets, args.out), end="")
        return 0
    run_pipeline(args.recipe, args.sets, args.out, plot=not args.no_plot, overwrite=args.overwrite)
    return 0
