"""``aha rewards``: list the registered reward functions, or show one with its formula and parameters."""

from __future__ import annotations

import argparse
import inspect

NAME = "rewards"
TRAINER_ARGS = ("completions", "prompts", "completion_ids")


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="list the reward functions, or show one",
        description="The registered reward functions (TRL's signature), with their parameters and defaults. "
        "Use them in a config by name, as {name: ..., weight: ..., PARAM: VALUE}, or write your own as "
        "'module:function' or 'path/to/file.py:function'.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="a table of every reward: name, meaning, parameters (default action)")
    show = actions.add_parser("show", help="one reward: its formula, parameters and the dataset columns it reads")
    show.add_argument("name", help="a reward name (see `aha rewards list`)")


def _fmt(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _params(spec) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in spec.params().items()) or "—"


def _columns(spec) -> list[str]:
    """Dataset columns a reward reads: its named non-keyword-only arguments other than what the trainer passes."""
    sig = inspect.signature(spec.fn)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in sig.parameters.values() if p.kind in kinds and p.name not in TRAINER_ARGS]
    gold = spec.params().get("gold_column")
    return names + ([f"{gold} (or answer; set by gold_column)"] if gold else [])


def _console():
    from rich.console import Console

    return Console(soft_wrap=False)


def list_rewards() -> None:
    from rich.table import Table

    from aha.rewards import REGISTRY

    table = Table(title="aha reward functions", show_lines=False)
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("meaning")
    table.add_column("parameters (defaults)", style="green")
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        table.add_row(name, spec.summary, _params(spec))
    console = _console()
    console.print(table)
    console.print("Details and formula: aha rewards show NAME", highlight=False)


def show_reward(name: str) -> None:
    from rich.table import Table

    from aha.rewards import REGISTRY, get

    get(name)  # unknown names: a ValueError with suggestions
    spec = REGISTRY[name]
    console = _console()
    console.print(f"[bold cyan]{name}[/]: {spec.summary}", highlight=False)
    doc = inspect.getdoc(spec.fn)
    if doc:
        console.print(doc, highlight=False, markup=False)
    columns = _columns(spec)
    if columns:
        console.print(f"dataset columns: {', '.join(columns)}", highlight=False)
    params = spec.params()
    if params:
        table = Table(title=None)
        table.add_column("parameter", style="bold", no_wrap=True)
        table.add_column("type")
        table.add_column("default", style="green")
        for key, default in params.items():
            table.add_row(key, type(default).__name__, _fmt(default))
        console.print(table)
    else:
        console.print("parameters: none", highlight=False)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "show":
        show_reward(args.name)
    else:
        list_rewards()
    return 0
