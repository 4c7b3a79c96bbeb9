"""``aha tasks``: list the built-in tasks, or show a sample row of each split of one."""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

from aha.cli import add_set_option

NAME = "tasks"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="list the built-in tasks or show sample rows of one",
        description="Built-in verifiable tasks: offline generators of problems, SFT traces and a verifier.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="a table of the tasks, their descriptions and parameters")
    show = actions.add_parser("show", help="a sample row of each split (sft, train, eval) of a task")
    show.add_argument("task", metavar="NAME", help="task name (see `aha tasks list`), e.g. countdown or rg:chain_sum")
    add_set_option(show, "a task parameter, e.g. --set count=3 (values are read as YAML)", dest="params")
    show.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")


def task_params(cls: type) -> dict[str, Any]:
    """A task class's parameters and their defaults, from its ``__init__`` signature."""
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default for p in sig.parameters.values() if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    }


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["count=3", "eval_fraction=0.2"]`` -> ``{"count": 3, "eval_fraction": 0.2}`` (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def escape(text: str) -> str:
    """`text` shown as it is by rich (``rg:[a, b]`` is not markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _list() -> int:
    from rich.console import Console
    from rich.table import Table

    from aha.tasks import TASKS

    table = Table(title="Built-in tasks", show_lines=True)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("description")
    table.add_column("parameters (defaults)")
    for name in sorted(TASKS):
        cls = TASKS[name]
        params = "\n".join(f"{k}={v!r}" for k, v in task_params(cls).items())
        table.add_row(name, cls.description, params or "-")
    console = Console(width=160)
    console.print(table)
    _list_reasoning_gym(console)
    return 0


def _list_reasoning_gym(console: Any) -> None:
    """reasoning-gym's generators (``rg:NAME``), one line each, when it is installed; how to install it if not."""
    from rich.table import Table

    from aha.tasks import reasoning_gym as rg

    if not rg.available():
        console.print(f"reasoning-gym tasks (rg:NAME): not installed; {rg.INSTALL}", markup=False, highlight=False)
        return
    names = list(rg.generators())
    table = Table(
        title=escape(
            f"reasoning-gym tasks ({len(names)}): rg:NAME or a mix rg:[a, b]; parameters config (the generator's "
            "fields), weights (a mix), eval_fraction=0.1, instruction=True"
        ),
        title_justify="left",
    )
    table.add_column("task", no_wrap=True, style="bold")
    table.add_column("description")
    table.add_column("config fields")
    for name in names:
        table.add_row(f"{rg.PREFIX}{name}", escape(rg.describe(name)), ", ".join(rg.config_fields(name)) or "-")
    console.print(table)


def _show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from aha.tasks import get_task
    from aha.tasks import reasoning_gym as rg
    from aha.tasks.base import SPLITS

    params = parse_params(args.params)
    if args.task.startswith(rg.PREFIX):  # --set a generator's field: it goes into the task's config
        params = rg.with_config(params)
    task = get_task(args.task, **params)
    console = Console(width=160)
    console.print(f"[bold]{escape(task.name)}[/bold]: {escape(task.description)}")
    for name in getattr(task, "generators", []):  # a reasoning-gym task: its generators' configuration
        fields = ", ".join(f"{k}={v!r}" for k, v in rg.config_fields(name).items())
        console.print(f"{rg.PREFIX}{name}: {rg.describe(name)}; config: {fields or '-'}", markup=False, highlight=False)
    for split in SPLITS:
        row = task.rows(split, 1, args.seed)[0]
        console.rule(f"split {split}")
        console.print_json(json.dumps(row, ensure_ascii=False))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        return _show(args)
    if args.action == "list" or args.action is None:
        return _list()
    raise ValueError(f"unknown action {args.action!r}; use list or show")
