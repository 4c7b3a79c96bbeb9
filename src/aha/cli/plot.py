"""``aha plot``: training curves of a run as PNGs in RUN/plots/ and a RUN/report.md that shows them."""

from __future__ import annotations

import argparse

NAME = "plot"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="plot a run's training curves into RUN/plots/ and write RUN/report.md",
        description="Read RUN/metrics.jsonl and write one PNG per metric family (reward, per-function rewards, "
        "held-out accuracy, KL, entropy, clip ratios, completion length, truncation, SFT loss) into RUN/plots/, "
        "and RUN/report.md with them, the run's config and its summary. Absent metrics are skipped.",
    )
    p.add_argument("run_dir", metavar="RUN", help="run directory (holding metrics.jsonl)")


def run(args: argparse.Namespace) -> int:
    from aha.console import console
    from aha.workflows.report import plot_run

    paths = plot_run(args.run_dir)
    for path in paths:
        console.print(str(path), markup=False, highlight=False)
    return 0
