"""The ``aha`` command line: thin, it parses arguments and calls the library.

Each sub-command lives in ``aha.cli.<name>`` with ``add_parser(subparsers)`` and ``run(args)``.
A bad input ends with one line ``aha <command>: error: ...`` on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import version

COMMANDS = [
    "demo",
    "rewards",
    "eval",
    "chat",
    "export",
    "plot",
    "tasks",
    "train",
    "sft",
    "sample",
    "pipeline",
    "models",
]


def add_set_option(p: argparse.ArgumentParser, help: str, dest: str = "sets") -> None:
    """The repeatable ``--set KEY=VALUE`` every command that takes overrides shares (values are YAML)."""
    p.add_argument("--set", dest=dest, action="append", default=[], metavar="KEY=VALUE", help=f"{help}; repeatable")


def add_dtype_option(p: argparse.ArgumentParser, extra: str = "") -> None:
    """The ``--dtype`` of the commands that load a model to sample from it (eval, sample, chat); see
    :mod:`aha.workflows.inference` (the choices are repeated here so that ``--help`` imports no torch)."""
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="load the model in this dtype (default: auto, the checkpoint's own where the device computes it "
        "natively, else float32); bfloat16 is refused on a CPU without bf16 instructions" + extra,
    )


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and exits 2."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = _Parser(prog="aha", description="Train language models to reason with GRPO.")
    parser.add_argument("--version", action="version", version=f"aha {version('aha')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = {}
    for name in COMMANDS:
        module = importlib.import_module(f"aha.cli.{name}")
        module.add_parser(sub)
        modules[module.NAME] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"aha {args.command}: error: {e}", file=sys.stderr)
        return 1
