"""``aha demo``: tiny model → cold-start SFT → GRPO → held-out eval, offline (the pipeline recipes/demo.yaml)."""

from __future__ import annotations

import argparse

from aha.cli import add_set_option

NAME = "demo"


def add_parser(sub) -> None:
    from aha.workflows.demo import OPTIONS, RECIPE

    p = sub.add_parser(
        NAME,
        help="the R1 recipe in miniature: tiny model → cold-start SFT → GRPO → held-out eval",
        description="Build a tiny model, cold-start it with SFT, train it with GRPO and evaluate it on a "
        "held-out split, offline, in a few minutes on a CPU: the pipeline recipes/demo.yaml, then its held-out "
        "evaluations compared (cold start → after GRPO). Each option below sets the pipeline keys it names "
        "(default: the recipe's value); --set overrides any other.",
    )
    p.add_argument("--out", default="runs/demo", help="pipeline directory; re-running resumes it (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="start over: delete an existing demo pipeline directory")
    for o in OPTIONS:
        p.add_argument(
            "--" + o.name.replace("_", "-"),
            type=o.type,
            default=None,
            dest=o.name,
            metavar=o.type.__name__.upper(),
            help=f"{o.help} (sets {', '.join(o.keys)})",
        )
    add_set_option(
        p,
        "override any other pipeline key, as `aha pipeline --set` (e.g. stages.grpo.training.top_p=0.9); "
        "applied after the options",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-plot", action="store_true", help="skip each stage's plots/ and report.md")
    p.add_argument("--dry-run", action="store_true", help="validate the pipeline and print its resolved settings")
    p.add_argument("--recipe", default=str(RECIPE), help="the demo pipeline recipe (default: aha's recipes/demo.yaml)")


def run(args: argparse.Namespace) -> int:
    from aha.workflows.demo import OPTIONS, demo_sets, run_demo

    options = {o.name: getattr(args, o.name) for o in OPTIONS}
    if args.dry_run:
        from aha.workflows.pipeline import dry_run_report

        print(dry_run_report(args.recipe, [*demo_sets(options), *args.sets], args.out), end="")
        return 0
    run_demo(
        options,
        args.sets,
        args.out,
        recipe=args.recipe,
        overwrite=args.overwrite,
        plot=not args.no_plot,
        threads=args.threads,
    )
    return 0
