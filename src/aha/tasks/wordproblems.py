"""Templated grade-school word problems in GSM8K's format, offline (a synthetic GSM8K).

Columns: ``answer`` is the clean integer (``"72"``, what the correctness reward and the verifier compare
against) and ``solution`` is the full GSM8K-style text, reasoning lines with calculator annotations and a
final ``#### 72`` line, exactly what ``openai/gsm8k``'s ``answer`` column looks like::

    Natalia sold 48/2 = <<48/2=24>>24 clips in May.
    Natalia sold 48+24 = <<48+24=72>>72 clips altogether.
    #### 72

The SFT trace puts the same reasoning (without the ``<<…>>`` annotations) in ``<think>`` and the number in
``<answer>``. Difficulty: ``max_value`` bounds the numbers drawn, ``min_steps``/``max_steps`` select
templates by their number of reasoning steps (1 to 3).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from aha.data.answers import final_answer, numeric_answer, reference_answer
from aha.tasks.base import Task, reasoning_instruction, task_row

NAMES = [("Natalia", "she"), ("Tom", "he"), ("Aisha", "she"), ("Carlos", "he"), ("Mei", "she"), ("Ravi", "he")]
ITEMS = ["apples", "stickers", "marbles", "cookies", "pencils", "books", "shells", "cards"]

# A step: (text before, expression, value, text after) -> "Before 48/2 = <<48/2=24>>24 after."
Step = tuple[str, str, int, str]
Problem = tuple[str, list[Step], int]


def _step(before: str, expr: str, value: int, after: str) -> Step:
    return before, expr, value, after


def _add(rng: random.Random, m: int) -> Problem:
    (name, he), item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, m), rng.randint(2, m)
    q = f"{name} has {a} {item}. Then {he} gets {b} more. How many {item} does {name} have now?"
    return q, [_step(f"{name} has ", f"{a}+{b}", a + b, f" {item} now.")], a + b


def _share(rng: random.Random, m: int) -> Problem:
    (name, _), item = rng.choice(NAMES), rng.choice(ITEMS)
    k, each = rng.randint(2, 12), rng.randint(2, m)
    total = k * each
    q = f"{name} shares {total} {item} equally among {k} friends. How many {item} does each friend get?"
    return q, [_step("Each friend gets ", f"{total}/{k}", each, f" {item}.")], each


def _half_more(rng: random.Random, m: int) -> Problem:
    (name, he), item = rng.choice(NAMES), rng.choice(ITEMS)
    a = 2 * rng.randint(1, max(1, m // 2))
    q = (
        f"{name} sold {a} {item} in April, and then {he} sold half as many {item} in May. "
        f"How many {item} did {name} sell altogether in April and May?"
    )
    steps = [
        _step(f"{name} sold ", f"{a}/2", a // 2, f" {item} in May."),
        _step(f"{name} sold ", f"{a}+{a // 2}", a + a // 2, f" {item} altogether in April and May."),
    ]
    return q, steps, a + a // 2


def _packs(rng: random.Random, m: int) -> Problem:
    (name, he), item = rng.choice(NAMES), rng.choice(ITEMS)
    n, k = rng.randint(2, 12), rng.randint(2, max(2, m // 4))
    g = rng.randint(1, n * k - 1)
    q = (
        f"{name} buys {n} packs of {item} with {k} {item} in each pack. {he.capitalize()} gives away {g} {item}. "
        f"How many {item} does {name} have left?"
    )
    steps = [
        _step(f"{name} buys ", f"{n}*{k}", n * k, f" {item}."),
        _step(f"{name} has ", f"{n * k}-{g}", n * k - g, f" {item} left."),
    ]
    return q, steps, n * k - g


def _wage(rng: random.Random, m: int) -> Problem:
    name, he = rng.choice(NAMES)
    w, h, d = rng.randint(5, max(5, m // 2)), rng.randint(2, 10), rng.randint(2, 7)
    q = f"{name} earns ${w} per hour. {he.capitalize()} works {h} hours a day for {d} days. How many dollars does {name} earn?"
    steps = [
        _step(f"{name} works ", f"{h}*{d}", h * d, " hours."),
        _step(f"{name} earns ", f"{h * d}*{w}", h * d * w, " dollars."),
    ]
    return q, steps, h * d * w


def _change(rng: random.Random, m: int) -> Problem:
    (name, he), item = rng.choice(NAMES), rng.choice(ITEMS)
    p, a, b = rng.randint(2, max(2, m // 10)), rng.randint(1, 9), rng.randint(1, 9)
    total = (a + b) * p
    bill = (total // 10 + 1) * 10 + rng.choice([0, 10, 40])
    q = (
        f"A shop sells {item} for ${p} each. {name} buys {a} {item} on Monday and {b} {item} on Tuesday. "
        f"{he.capitalize()} pays with ${bill}. How many dollars of change does {name} get?"
    )
    steps = [
        _step(f"{name} buys ", f"{a}+{b}", a + b, f" {item}."),
        _step("They cost ", f"{a + b}*{p}", total, " dollars."),
        _step(f"{name} gets ", f"{bill}-{total}", bill - total, " dollars of change."),
    ]
    return q, steps, bill - total


def _pages(rng: random.Random, m: int) -> Problem:
    name, he = rng.choice(NAMES)
    p = rng.randint(3, max(3, m))
    f = rng.randint(1, 2 * p - 1)
    q = (
        f"{name} reads {p} pages on Monday and twice as many pages on Tuesday. On Wednesday {he} reads {f} pages "
        f"fewer than on Tuesday. How many pages does {name} read in the three days?"
    )
    steps = [
        _step("On Tuesday ", f"2*{p}", 2 * p, " pages are read."),
        _step("On Wednesday ", f"{2 * p}-{f}", 2 * p - f, " pages are read."),
        _step("In total ", f"{p}+{2 * p}+{2 * p - f}", 5 * p - f, " pages are read."),
    ]
    return q, steps, 5 * p - f


# Template, number of reasoning steps.
TEMPLATES: list[tuple[Callable[[random.Random, int], Problem], int]] = [
    (_add, 1),
    (_share, 1),
    (_half_more, 2),
    (_packs, 2),
    (_wage, 2),
    (_change, 3),
    (_pages, 3),
]


def solution_text(steps: list[Step], answer: int) -> str:
    """GSM8K-style solution: one line per step with ``<<expr=value>>`` annotations, then ``#### answer``."""
    lines = [f"{b}{e} = <<{e}={v}>>{v}{a}" for b, e, v, a in steps]
    return "\n".join([*lines, f"#### {answer}"])


def think_text(steps: list[Step]) -> str:
    """The reasoning of a solution without calculator annotations, one line per step."""
    return "\n".join(f"{b}{e} = {v}{a}" for b, e, v, a in steps)


class WordProblems(Task):
    name = "wordproblems"
    description = "synthetic GSM8K: templated word problems; `answer` is the integer, `solution` GSM8K-style text"
    default_instruction = reasoning_instruction("number")

    def __init__(
        self,
        max_value: int = 100,
        min_steps: int = 1,
        max_steps: int = 3,
        eval_fraction: float = 0.1,
        instruction: bool | str = True,
    ) -> None:
        if not isinstance(max_value, int) or isinstance(max_value, bool) or not 10 <= max_value <= 100_000:
            raise ValueError(f"wordproblems: max_value must be an integer from 10 to 100000, got {max_value!r}")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or not 1 <= max_steps <= 3:
            raise ValueError(f"wordproblems: max_steps must be an integer from 1 to 3, got {max_steps!r}")
        if not isinstance(min_steps, int) or isinstance(min_steps, bool) or not 1 <= min_steps <= max_steps:
            raise ValueError(
                f"wordproblems: min_steps must be an integer from 1 to max_steps ({max_steps}), got {min_steps!r}"
            )
        if not isinstance(eval_fraction, (int, float)) or not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"wordproblems: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.max_value, self.min_steps, self.max_steps = max_value, min_steps, max_steps
        self.eval_fraction = float(eval_fraction)
        self.templates = [t for t, k in TEMPLATES if min_steps <= k <= max_steps]
        self.set_instruction(instruction)

    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def draw(rng: random.Random) -> tuple[str, tuple]:
            question, steps, answer = rng.choice(self.templates)(rng, self.max_value)
            return question, (question, steps, answer)

        for _, (question, steps, answer) in self.draws(split, n, seed, draw, f"max_value={self.max_value}"):
            trace = f"<think>{think_text(steps)}</think><answer>{answer}</answer>" if split == "sft" else None
            out.append(task_row(self.ask(question), str(answer), trace, solution=solution_text(steps, answer)))
        return out

    def is_correct(self, completion: str, answer: str, **columns: Any) -> bool:
        """The final answer's number (``<answer>``, ``\\boxed{}``, ``####`` or "The answer is", see
        :func:`aha.data.answers.final_answer`) equals the ground truth, up to formatting (``1,234``, ``$72``,
        ``72.0``, ``72 apples``). `answer` may be the integer or a GSM8K solution ending in ``#### n``."""
        got = numeric_answer(final_answer(completion))
        if got is None:
            return False
        return got == reference_answer(str(answer), "gsm8k")
