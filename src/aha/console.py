"""The package's console and progress bar: one voice in a multi-process run (only the first process prints)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, quiet=os.environ.get("RANK", "0") != "0")  # one voice in a multi-process run


def progress(disable: bool = False) -> Progress:
    """A progress bar with a free-text `info` field (reward, accuracy, loss...); off with `disable`, with
    AHA_NO_PROGRESS=1 and on every process but the first of a multi-process run."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable or os.environ.get("AHA_NO_PROGRESS") == "1" or os.environ.get("RANK", "0") != "0",
        transient=False,
    )
