"""Verifiable tasks by name: the built-ins with offline generators, and reasoning-gym's (``rg:NAME``, ``rg:[a, b]``;
see :mod:`aha.tasks.reasoning_gym`)."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from aha.tasks.arithmetic import Arithmetic
from aha.tasks.base import Task
from aha.tasks.calculator import Calculator
from aha.tasks.coding import Coding
from aha.tasks.countdown import Countdown
from aha.tasks.reasoning_gym import PREFIX as RG_PREFIX
from aha.tasks.reasoning_gym import ReasoningGym
from aha.tasks.summarize import Summarize
from aha.tasks.wordproblems import WordProblems

TASKS: dict[str, type[Task]] = {t.name: t for t in (Arithmetic, Countdown, WordProblems, Summarize, Coding, Calculator)}


def is_task_name(name: Any) -> bool:
    """Does `name` name a task: a built-in one, or a reasoning-gym one (``rg:...``, checked when it is built)?"""
    return isinstance(name, str) and (name in TASKS or name.startswith(RG_PREFIX))


def task_class(name: str) -> type[Task] | None:
    """The class of task `name` (ReasoningGym for ``rg:...``), or None when there is none."""
    if isinstance(name, str) and name.startswith(RG_PREFIX):
        return ReasoningGym
    return TASKS.get(name)


def get_task(name: str, **params: Any) -> Task:
    """Instantiate the task `name` with its parameters (errors name the culprit)."""
    if isinstance(name, str) and name.startswith(RG_PREFIX):
        known = list(inspect.signature(ReasoningGym.__init__).parameters)[2:]
        unknown = [k for k in params if k not in known]
        if unknown:
            raise ValueError(
                f"task {name!r} has no parameter {unknown[0]!r} (a generator's own settings go under config: "
                f"{{{unknown[0]}: ...}}); its parameters: {', '.join(known)}"
            )
        return ReasoningGym(name, **params)
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown task {name!r}{hint}; built-in tasks: {', '.join(sorted(TASKS))}, "
            f"or a reasoning-gym one ({RG_PREFIX}NAME)"
        )
    try:
        return TASKS[name](**params)
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}") from None


__all__ = ["TASKS", "ReasoningGym", "Task", "get_task", "is_task_name", "task_class"]
