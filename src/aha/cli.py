"""The ``aha`` command line (thin: it parses arguments and calls the library)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from aha import __version__


class _Parser(argparse.ArgumentParser):
    """argparse, but 'unrecognized arguments' names the command and exits 2 with one line."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _demo_parser(sub) -> None:
    from aha.demo import DemoConfig

    p = sub.add_parser(
        "demo",
        help="the R1 recipe in miniature: tiny model → cold-start SFT → GRPO → held-out eval",
        description="Build a tiny model, cold-start it with SFT, train it with GRPO and evaluate it on a "
        "held-out split, offline, in a few minutes on a CPU.",
    )
    defaults = DemoConfig()
    helps = {
        "out": "run directory (refused if it exists and is not empty, unless --overwrite)",
        "seed": "random seed for everything",
        "digits": "number of digits of the addition task",
        "guess_fraction": "fraction of cold-start traces that guess instead of working the sum out",
        "sft_steps": "cold-start SFT optimiser steps",
        "grpo_steps": "GRPO optimiser steps",
        "threads": "torch CPU threads (0: default)",
    }
    for f in fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        p.add_argument(
            flag,
            type=type(value),
            default=value,
            dest=f.name,
            help=f"{helps.get(f.name, f.name.replace('_', ' '))} (default: {value})",
        )
    p.add_argument("--overwrite", action="store_true", help="replace an existing aha run in --out")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="aha", description="Train language models to reason with GRPO.")
    parser.add_argument("--version", action="version", version=f"aha {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _demo_parser(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            from aha.demo import DemoConfig, run_demo

            cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
            run_demo(cfg, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        print(f"aha {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
