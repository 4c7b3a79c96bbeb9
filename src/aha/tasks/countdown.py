"""Countdown: reach a target number from given numbers with + - * / (each number at most once).

Question ``Using the numbers [3, 8, 5, 2], write an expression that equals 26 ...``; the ``answer``
column holds the target (``"26"``) and the ``numbers`` column the given numbers (``[3, 8, 5, 2]``).
The verifier needs both, so :meth:`Countdown.is_correct` takes ``numbers`` as a keyword and
:func:`countdown_reward` is a TRL-style reward reading the two columns.

Every instance is solvable: the target is the value of a random expression over all the given
numbers whose intermediate results are positive integers; the SFT trace writes that expression out
one operation at a time (``<think>8-5=3 3*2=6 ...</think><answer>(8-5)*2+...</answer>``).

The verifier never calls ``eval``: a tokenizer and a recursive-descent parser accept only integers,
``+ - * /`` (and ``× ÷ −``), parentheses and spaces, optionally followed by ``= <target>``; numbers
must be a sub-multiset of the given ones, arithmetic is exact (:class:`fractions.Fraction`) and a
division by zero or a unary sign is a wrong answer, never an error.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from aha.data.answers import final_answer
from aha.data.prompts import completion_text
from aha.tasks.base import Task, reasoning_instruction, task_row

MAX_EXPRESSION_CHARS = 256
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")
_UNICODE_OPS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-"})
_OPS = "+-*/"
_ADD, _MUL, _ATOM = 1, 2, 3  # precedence of an expression's top-level operation


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # ZeroDivisionError is the caller's business


class _Parser:
    """Recursive descent over ``expr := term (('+'|'-') term)*``, ``term := factor (('*'|'/') factor)*``,
    ``factor := INT | '(' expr ')'``. Raises ValueError on anything else."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                raise ValueError(f"unexpected character {text[pos:].lstrip()[:1]!r}")
            self.tokens.append(("num", m.group(1)) if m.group(1) else ("op", m.group(2)))
            pos = m.end()
        self.i = 0
        self.numbers: list[int] = []

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self) -> Fraction:
        if not self.tokens:
            raise ValueError("empty expression")
        value = self._expr()
        if self._peek() is not None:
            raise ValueError(f"unexpected {self._peek()[1]!r}")  # type: ignore[index]
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while (tok := self._peek()) is not None and tok[1] in "+-":
            self.i += 1
            value = _apply(tok[1], value, self._term())
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while (tok := self._peek()) is not None and tok[1] in "*/":
            self.i += 1
            value = _apply(tok[1], value, self._factor())
        return value

    def _factor(self) -> Fraction:
        tok = self._peek()
        if tok is None:
            raise ValueError("expression ends too early")
        self.i += 1
        if tok[0] == "num":
            self.numbers.append(int(tok[1]))
            return Fraction(int(tok[1]))
        if tok[1] == "(":
            value = self._expr()
            if self._peek() != ("op", ")"):
                raise ValueError("unbalanced parentheses")
            self.i += 1
            return value
        raise ValueError(f"unexpected {tok[1]!r}")


def check_expression(expression: str, numbers: Sequence[int], target: int | str) -> bool:
    """Is `expression` a valid countdown solution: only given numbers (each at most once), exact
    arithmetic, value == target? An optional ``= <target>`` suffix is allowed. Never raises on bad input."""
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return False
    try:
        goal = Fraction(int(str(target).strip()))
    except ValueError:
        return False
    text = expression.translate(_UNICODE_OPS)
    if text.count("=") > 1:
        return False
    if "=" in text:
        text, rhs = text.split("=")
        if rhs.strip() != str(int(goal)):
            return False
    try:
        parser = _Parser(text)
        # Check the numbers before doing any arithmetic, so nothing unexpected gets computed.
        if Counter(int(v) for kind, v in parser.tokens if kind == "num") - Counter(int(n) for n in numbers):
            return False
        value = parser.parse()
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    return value == goal


def parse_numbers(numbers: Any) -> list[int]:
    """The `numbers` column as a list of ints (accepts a list, or a string like ``"[3, 8]"`` / ``"3 8"``)."""
    if isinstance(numbers, str):
        return [int(x) for x in re.findall(r"-?\d+", numbers)]
    return [int(x) for x in numbers]


class Countdown(Task):
    name = "countdown"
    description = "reach a target from given numbers with + - * / (each at most once); exact, eval-free verifier"
    default_instruction = reasoning_instruction("expression")

    def __init__(
        self,
        count: int = 4,
        max_number: int = 20,
        max_target: int = 100,
        eval_fraction: float = 0.1,
        instruction: bool | str = True,
    ) -> None:
        if not isinstance(count, int) or isinstance(count, bool) or not 2 <= count <= 6:
            raise ValueError(f"countdown: count must be an integer from 2 to 6, got {count!r}")
        if not isinstance(max_number, int) or isinstance(max_number, bool) or not 2 <= max_number <= 1000:
            raise ValueError(f"countdown: max_number must be an integer from 2 to 1000, got {max_number!r}")
        if not isinstance(max_target, int) or isinstance(max_target, bool) or not 1 <= max_target <= 100_000:
            raise ValueError(f"countdown: max_target must be an integer from 1 to 100000, got {max_target!r}")
        if not isinstance(eval_fraction, (int, float)) or not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"countdown: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.count, self.max_number, self.max_target = count, max_number, max_target
        self.eval_fraction = float(eval_fraction)
        self.set_instruction(instruction)

    def _instance(self, rng: random.Random) -> tuple[list[int], int, str, list[str]] | None:
        """Random numbers combined in a random order with random operations: (numbers, target,
        expression, steps), or None when an intermediate result is not a positive integer or the
        target is out of range."""
        numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
        items: list[tuple[int, str, int]] = [(n, str(n), _ATOM) for n in numbers]  # value, text, precedence
        steps: list[str] = []
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            (a, ta, pa), (b, tb, pb) = items[i], items[j]
            op = rng.choice(_OPS)
            if op == "/" and (a % b != 0):
                return None
            v = int(_apply(op, Fraction(a), Fraction(b)))
            if v <= 0:
                return None
            prec = _ADD if op in "+-" else _MUL
            # Parenthesise only where precedence or non-associativity needs it.
            left = f"({ta})" if prec == _MUL and pa == _ADD else ta
            right_needs = (op == "-" and pb == _ADD) or (op == "*" and pb == _ADD) or (op == "/" and pb != _ATOM)
            right = f"({tb})" if right_needs else tb
            steps.append(f"{a}{op}{b}={v}")
            items = [x for k, x in enumerate(items) if k not in (i, j)] + [(v, f"{left}{op}{right}", prec)]
        target, expression = items[0][0], items[0][1]
        if target > self.max_target:
            return None
        return numbers, target, expression, steps

    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def draw(rng: random.Random) -> tuple[str, tuple] | None:
            inst = self._instance(rng)
            # The problem is the multiset of numbers and the target, whatever their order.
            return None if inst is None else (f"{sorted(inst[0])}->{inst[1]}", inst)

        what = f"count={self.count}, max_number={self.max_number}, max_target={self.max_target}"
        for rng, (numbers, target, expression, steps) in self.draws(split, n, seed, draw, what):
            shown = rng.sample(numbers, len(numbers))
            question = (
                f"Using the numbers {shown}, write an expression that equals {target}. "
                "You may use + - * / and parentheses, and each number at most once."
            )
            trace = f"<think>{' '.join(steps)}</think><answer>{expression}</answer>"
            out.append(task_row(self.ask(question), str(target), trace if split == "sft" else None, numbers=shown))
        return out

    def is_correct(
        self, completion: str, answer: str, numbers: Sequence[int] | str | None = None, **columns: Any
    ) -> bool:
        """Is the final answer (the last ``<answer>``, else ``\\boxed{}``, ``####`` or "The answer is", see
        :func:`aha.data.answers.final_answer`) an expression that solves it? `numbers` (the row's column) is required:
        without it any expression equal to the target would pass, so its absence is an error."""
        if numbers is None:
            raise ValueError(
                "countdown: is_correct needs the row's `numbers` column (is_correct(text, answer, numbers))"
            )
        got = final_answer(completion)
        return got is not None and check_expression(got, parse_numbers(numbers), answer)

    def reward_columns(self) -> list[str]:
        return ["answer", "numbers"]


def countdown_reward(completions: list[Any], answer: list[Any], numbers: list[Any], **kwargs: Any) -> list[float]:
    """TRL-style reward: 1.0 when the completion's final answer (``<answer>``, ``\\boxed{}``, ``####`` or "The answer
    is") is an expression reaching the row's target with the row's numbers, else 0.0."""
    out = []
    for c, a, nums in zip(completions, answer, numbers):
        got = final_answer(completion_text(c))
        out.append(1.0 if got is not None and check_expression(got, parse_numbers(nums), a) else 0.0)
    return out
