"""Small Python function problems checked by running assert tests in the sandbox: a toy task for code rewards.

Question: "Write a Python function `f(x)` that returns the sum of the digits of the non-negative integer `x`.
…"; the ``tests`` column holds three asserts on random inputs (``assert f(407) == 11``), the ``answer`` column
a reference solution. The ``sft`` trace is ``<think>how</think>`` followed by the solution in a ```python
block. A problem is a family (12) and its parameter (e.g. "add 7 to every element"), 273 in all; the
evaluation split holds out a stable hash-chosen share of them (``in_eval_split``), whatever the inputs drawn.

Train with the ``code`` (fraction of asserts passed) or ``binary_code`` reward, which read the ``tests`` column.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aha.tasks.base import SPLITS, Task, in_eval_split, task_row

Gen = Callable[[random.Random], Any]


@dataclass(frozen=True)
class Family:
    """A kind of problem; `{k}` in the texts is the problem's parameter, drawn from `params`."""

    name: str
    params: tuple[Any, ...]
    question: str  # what f must do
    thought: str  # the sft trace's <think> content
    solution: str  # reference source defining f
    inputs: Gen  # one random argument of f


def _ints(lo: int, hi: int) -> Gen:
    return lambda rng: rng.randint(lo, hi)


def _lists(lo: int, hi: int) -> Gen:
    return lambda rng: [rng.randint(lo, hi) for _ in range(rng.randint(0, 6))]


def _words(rng: random.Random) -> str:
    return "".join(rng.choice("abcdeiou" + string.ascii_lowercase) for _ in range(rng.randint(0, 10)))


FAMILIES = (
    Family(
        "add",
        tuple(range(1, 100)),
        "returns the integer `x` plus {k}",
        "Add {k} to x.",
        "def f(x):\n    return x + {k}",
        _ints(-100, 1000),
    ),
    Family(
        "multiply",
        tuple(range(2, 31)),
        "returns the integer `x` multiplied by {k}",
        "Multiply x by {k}.",
        "def f(x):\n    return x * {k}",
        _ints(-100, 1000),
    ),
    Family(
        "power",
        (2, 3, 4, 5),
        "returns the integer `x` to the power {k}",
        "Raise x to the power {k} with **.",
        "def f(x):\n    return x ** {k}",
        _ints(-20, 20),
    ),
    Family(
        "digit_sum_plus",
        tuple(range(0, 10)),
        "returns the sum of the digits of the non-negative integer `x`, plus {k}",
        "Go through the digits of str(x), add them up, then add {k}.",
        "def f(x):\n    return sum(int(d) for d in str(x)) + {k}",
        _ints(0, 100000),
    ),
    Family(
        "count_char",
        tuple(string.ascii_lowercase),
        "returns how many times the letter '{k}' occurs in the string `s`",
        "Count the occurrences of '{k}' in s with str.count.",
        "def f(s):\n    return s.count('{k}')",
        _words,
    ),
    Family(
        "divisible",
        tuple(range(2, 13)),
        "returns how many numbers in the list of integers `xs` are divisible by {k}",
        "Count the numbers x in xs with x % {k} == 0.",
        "def f(xs):\n    return sum(1 for x in xs if x % {k} == 0)",
        _lists(-50, 50),
    ),
    Family(
        "add_each",
        tuple(range(1, 50)),
        "returns a new list with {k} added to every element of the list of integers `xs`",
        "Build a list comprehension adding {k} to each element.",
        "def f(xs):\n    return [x + {k} for x in xs]",
        _lists(-50, 50),
    ),
    Family(
        "greater",
        tuple(range(-10, 21)),
        "returns the elements of the list of integers `xs` that are greater than {k}, in their order",
        "Keep the elements x of xs with x > {k}, in order.",
        "def f(xs):\n    return [x for x in xs if x > {k}]",
        _lists(-30, 30),
    ),
    Family(
        "repeat",
        (2, 3, 4, 5),
        "returns the string `s` repeated {k} times",
        "Multiply the string s by {k}.",
        "def f(s):\n    return s * {k}",
        _words,
    ),
    Family(
        "sum_multiples",
        tuple(range(2, 10)),
        "returns the sum of the integers from 1 to `n` (inclusive) that are divisible by {k}",
        "Loop i from 1 to n and add i when i % {k} == 0.",
        "def f(n):\n    return sum(i for i in range(1, n + 1) if i % {k} == 0)",
        _ints(0, 200),
    ),
    Family(
        "reverse",
        ("",),
        "returns the string `s` reversed",
        "Reverse s with the slice s[::-1].",
        "def f(s):\n    return s[::-1]",
        _words,
    ),
    Family(
        "spread",
        ("",),
        "returns the largest minus the smallest element of the non-empty list of integers `xs`",
        "Subtract min(xs) from max(xs).",
        "def f(xs):\n    return max(xs) - min(xs)",
        lambda rng: [rng.randint(-50, 50) for _ in range(rng.randint(1, 6))],
    ),
)
QUESTION = "Write a Python function `f` that {what}."
INSTRUCTION = "Think in <think> </think>, then give the code of `f` in a ```python block."


def reference(family: Family, k: Any) -> Callable[[Any], Any]:
    """The reference solution of problem (family, k) as a callable (our own code, run in-process)."""
    ns: dict[str, Any] = {}
    exec(family.solution.format(k=k), ns)  # noqa: S102  (trusted: the task's own reference source)
    return ns["f"]


class Coding(Task):
    name = "coding"
    description = "write a small Python function f; checked by running assert tests in the sandbox (code rewards)"
    default_instruction = INSTRUCTION

    def __init__(self, n_tests: int = 3, eval_fraction: float = 0.1, instruction: bool | str = True) -> None:
        if not isinstance(n_tests, int) or not 1 <= n_tests <= 20:
            raise ValueError(f"coding: n_tests must be an integer from 1 to 20, got {n_tests!r}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"coding: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.n_tests, self.eval_fraction = n_tests, eval_fraction
        self.set_instruction(instruction)
        # split -> [(family, its parameters in that split)]: a family is drawn uniformly, then a parameter
        self.problems: dict[str, list[tuple[Family, list[Any]]]] = {}
        for split in ("train", "eval"):
            held_out = split == "eval"
            groups = [
                (f, [k for k in f.params if in_eval_split(f"{f.name}/{k}", eval_fraction) == held_out])
                for f in FAMILIES
            ]
            self.problems[split] = [(f, ks) for f, ks in groups if ks]
        if not all(self.problems.values()):
            raise ValueError(f"coding: eval_fraction={eval_fraction} leaves a split without problems")

    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        if split not in SPLITS:
            raise ValueError(f"coding: unknown split {split!r}; choose from {SPLITS}")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        pool = self.problems["eval" if split == "eval" else "train"]
        out: list[dict[str, Any]] = []
        for _ in range(n):
            family, params = rng.choice(pool)
            k = rng.choice(params)
            f = reference(family, k)
            args = [family.inputs(rng) for _ in range(self.n_tests)]
            tests = "\n".join(f"assert f({a!r}) == {f(a)!r}" for a in args)
            solution = family.solution.format(k=k)
            question = self.ask(QUESTION.format(what=family.question.format(k=k)))
            trace = f"<think>{family.thought.format(k=k)}</think>\n```python\n{solution}\n```"
            out.append(task_row(question, solution, trace if split == "sft" else None, tests=tests))
        return out

    def is_correct(self, completion: str, answer: str, tests: str | None = None, **columns: Any) -> bool:
        """Does the completion's last ```python block pass all the row's `tests` in the sandbox? `tests` is
        required (without it there is nothing to run); a sandbox failure raises SandboxError."""
        if tests is None:
            raise ValueError("coding: is_correct needs the row's `tests` column (is_correct(text, answer, tests=...))")
        from aha.rewards.code import extract_code, score

        return score(extract_code(completion), tests) == 1.0

    def reward_columns(self) -> list[str]:
        return ["answer", "tests"]
