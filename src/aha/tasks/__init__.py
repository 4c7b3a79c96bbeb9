"""Built-in verifiable tasks with offline generators, by name."""

from __future__ import annotations

import difflib
from typing import Any

from aha.tasks.arithmetic import Arithmetic
from aha.tasks.base import Task
from aha.tasks.coding import Coding
from aha.tasks.countdown import Countdown
from aha.tasks.summarize import Summarize
from aha.tasks.wordproblems import WordProblems

TASKS: dict[str, type[Task]] = {t.name: t for t in (Arithmetic, Countdown, WordProblems, Summarize, Coding)}


def get_task(name: str, **params: Any) -> Task:
    """Instantiate the built-in task `name` with its parameters (errors name the culprit)."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; built-in tasks: {', '.join(sorted(TASKS))}")
    try:
        return TASKS[name](**params)
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}") from None


__all__ = ["TASKS", "Task", "get_task"]
