"""The ``aha`` command line: thin, it parses arguments and calls the library.

Each sub-command lives in ``aha.cli.<name>`` with ``add_parser(subparsers)`` and ``run(args)``.
A bad input ends with one line ``aha <command>: error: ...`` on stderr and a non-zero exit.

The long commands (``RESUMABLE``) run under :func:`aha.train.interrupts.graceful_signals`: Ctrl-C (SIGINT) or
SIGTERM lets the step in flight finish and saves (a second one stops at once), then one line on stderr says what
was saved and the command that continues the run, and the exit status is 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

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


# the commands that stop cleanly on SIGINT/SIGTERM -> the flag that continues them (None: running the same
# command again continues it)
RESUMABLE = {"train": "--resume", "sft": "--resume", "sample": "--resume", "pipeline": None, "demo": None}


def resume_command(command: str, argv: list[str] | None = None) -> str:
    """The command line that continues an interrupted `command`: the one this process runs (`argv`: the arguments
    given to :func:`main`, as ``aha ...``), without ``--overwrite`` and any ``--resume [VALUE]``, with ``--resume``
    where the command takes it; quoted for a POSIX shell."""
    words, out = list(sys.argv[1:] if argv is None else argv), []
    flag = RESUMABLE.get(command)
    skip_value = False
    for w in words:
        name = w.split("=", 1)[0]
        if skip_value and not w.startswith("-"):
            skip_value = False
            continue  # --resume's value
        skip_value = False
        if len(name) > 2 and name.startswith("--") and "--overwrite".startswith(name):
            continue
        if flag and len(name) > 2 and name.startswith("--") and flag.startswith(name):
            skip_value = "=" not in w
            continue
        out.append(w)
    if flag:
        out.append(flag)
    return shlex.join([*_program(argv), *out])


def _program(argv: list[str] | None) -> list[str]:
    """How this process was started, up to its arguments: ``aha`` (the installed script, or `argv` given), or the
    interpreter's own words for ``python -m aha.cli``."""
    if argv is not None:
        return ["aha"]
    if sys.argv[0].endswith("__main__.py"):  # python [options] -m aha.cli
        return list(sys.orig_argv[: len(sys.orig_argv) - len(sys.argv) + 1])
    found = shutil.which("aha")
    same = found is not None and Path(found).resolve() == Path(sys.argv[0]).resolve()
    return ["aha" if same else sys.argv[0]]


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
    from aha.train.interrupts import Interrupted, graceful_signals

    try:
        if args.command not in RESUMABLE:
            return int(modules[args.command].run(args) or 0)
        with graceful_signals():
            return int(modules[args.command].run(args) or 0)
    except Interrupted as e:
        print(f"aha {args.command}: {e.describe()}; resume with: {resume_command(args.command, argv)}", file=sys.stderr)
        return e.exit_code
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"aha {args.command}: error: {e}", file=sys.stderr)
        return 1
