"""Multi-digit addition written out column by column: a task whose answer needs its chain of thought.

Question ``47+38``; trace ``<think>7+8=15 4+3+1=8</think><answer>85</answer>``: one step per column,
right to left, ``+1`` when the previous column carried. A small model cannot add two numbers in one
shot, but it can learn each column step, so the thought is what makes the answer reachable.

With ``guess_fraction > 0`` that share of the cold-start (``sft``) traces are quick guesses instead:
``<think>easy</think><answer>75</answer>`` — added column by column in the head, forgetting to carry
(a classic slip), so a guess is wrong exactly when a column carries. A model cold-started on such
data has two habits; reinforcement learning with a correctness reward has to find out which pays.
"""

from __future__ import annotations

import random
from typing import Any

from aha.data.answers import final_answer
from aha.tasks.base import Task, reasoning_instruction, task_row

GUESS_THOUGHT = "easy"


def sum_without_carry(a: int, b: int) -> int:
    """a + b, forgetting every carry except the top column's: 47+38 -> 75, 65+92 -> 157."""
    da, db = str(a)[::-1], str(b)[::-1]
    width = max(len(da), len(db))
    cols = [(int(da[i]) if i < len(da) else 0) + (int(db[i]) if i < len(db) else 0) for i in range(width)]
    return int(str(cols[-1]) + "".join(str(c % 10) for c in reversed(cols[:-1])))


def column_trace(a: int, b: int) -> str:
    """Column-by-column working of a + b, e.g. 47, 38 -> '7+8=15 4+3+1=8'."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={s}")
        carry = s // 10
    return " ".join(steps)


class Arithmetic(Task):
    name = "arithmetic"
    description = "n-digit addition with column-by-column <think> working; exact integer answer"
    default_instruction = reasoning_instruction("sum")

    def __init__(
        self,
        digits: int = 2,
        min_digits: int | None = None,
        eval_fraction: float = 0.1,
        guess_fraction: float = 0.0,
        instruction: bool | str = True,
    ) -> None:
        if not isinstance(digits, int) or not 1 <= digits <= 9:
            raise ValueError(f"arithmetic: digits must be an integer from 1 to 9, got {digits!r}")
        lo = digits if min_digits is None else min_digits
        if not isinstance(lo, int) or not 1 <= lo <= digits:
            raise ValueError(
                f"arithmetic: min_digits must be an integer from 1 to digits ({digits}), got {min_digits!r}"
            )
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"arithmetic: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if not 0.0 <= guess_fraction < 1.0:
            raise ValueError(f"arithmetic: guess_fraction must be in [0, 1), got {guess_fraction!r}")
        self.digits, self.min_digits, self.eval_fraction = digits, lo, eval_fraction
        self.guess_fraction = guess_fraction
        self.set_instruction(instruction)

    def _operand(self, rng: random.Random) -> int:
        d = rng.randint(self.min_digits, self.digits)
        return rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1)

    def _draw(self, rng: random.Random) -> tuple[str, tuple[int, int]]:
        a, b = self._operand(rng), self._operand(rng)
        return f"{a}+{b}", (a, b)

    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rng, (a, b) in self.draws(split, n, seed, self._draw, f"digits={self.digits}"):
            trace = None
            if split == "sft":
                # A `guess_fraction` of the cold-start traces answer without working it out: the model
                # then starts from a mix of habits, and RL has to discover which one earns the reward.
                if rng.random() < self.guess_fraction:
                    thought, said = GUESS_THOUGHT, sum_without_carry(a, b)
                else:
                    thought, said = column_trace(a, b), a + b
                trace = f"<think>{thought}</think><answer>{said}</answer>"
            out.append(task_row(self.ask(f"{a}+{b}"), str(a + b), trace))
        return out

    def is_correct(self, completion: str, answer: str, **columns: Any) -> bool:
        """The final answer (``<answer>``, ``\\boxed{}``, ``####`` or "The answer is", see
        :func:`aha.data.answers.final_answer`) is the sum exactly as an integer is written: ``085`` is wrong."""
        got = final_answer(completion)
        return got is not None and got == str(answer).strip()
