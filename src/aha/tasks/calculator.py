"""Multi-digit arithmetic where calling a calculator pays: a task for teaching tool use by RL.

Question ``347*862`` (the bare expression); answer ``299114``. A small model cannot multiply two 3-digit numbers in
its head, but it can call the ``calculator`` tool (:attr:`Calculator.tools`): it writes
``<tool_call>{"name": "calculator", "arguments": {"expression": "347*862"}}</tool_call>`` and ends its turn, the
rollout runs the tool and appends its result as a ``tool`` message, and the model answers ``<answer>299114</answer>``.

The cold-start (``sft``) completions are lists of messages. A `call_fraction` share of them calls the tool::

    [{"role": "assistant", "content": "<tool_call>...</tool_call>"},
     {"role": "tool", "name": "calculator", "content": "299114"},
     {"role": "assistant", "content": "<answer>299114</answer>"}]

the others are quick guesses, ``[{"role": "assistant", "content": "<answer>298111</answer>"}]``: the leading half of
the digits right, the tail made up, so usually wrong. A model cold-started on both habits has to find out by RL
which one the correctness reward pays. An `easy_fraction` share of the problems are one digit by one digit
(``7*8``), where a guess is the exact result: calling does not matter there, so RL should learn to call when it
pays, not always.
"""

from __future__ import annotations

import random
from typing import Any

from aha.data.answers import final_answer
from aha.tasks.base import Task, task_row
from aha.tools.calls import format_call
from aha.tools.toolbox import ToolCall

OPS = "+-*"
TOOL = "calculator"


def evaluate(a: int, op: str, b: int) -> int:
    """``a op b`` for op in OPS."""
    return a + b if op == "+" else a - b if op == "-" else a * b


def guess(exact: int, rng: random.Random) -> int:
    """A quick guess at `exact`: the sign and the leading half of the digits (rounded up) right, the rest made up.
    One- and two-digit results (the one-digit facts of the easy problems) come back exact."""
    digits = str(abs(exact))
    if len(digits) <= 2:
        return exact
    keep = (len(digits) + 1) // 2
    tail = "".join(str(rng.randrange(10)) for _ in range(len(digits) - keep))
    return int(("-" if exact < 0 else "") + digits[:keep] + tail)


def last_assistant_text(completion: Any) -> str:
    """The text of a completion's last assistant message (the whole text for a plain-text completion); empty when a
    list of messages has no assistant message."""
    if isinstance(completion, list):
        said = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return str(said[-1].get("content") or "") if said else ""
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, str):
        return completion
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


class Calculator(Task):
    name = "calculator"
    description = "multi-digit + - * where calling the calculator tool pays; cold-start traces call it or guess"
    default_instruction = (
        "Call the calculator tool when the arithmetic is hard, then give only the final result in <answer> </answer>."
    )
    tools = (TOOL,)  # the built-in tools a run on this task gives the model (a recipe's `tools:`)

    def __init__(
        self,
        digits: int = 3,
        ops: str = "*",
        easy_fraction: float = 0.0,
        call_fraction: float = 0.5,
        eval_fraction: float = 0.1,
        instruction: bool | str = False,
    ) -> None:
        if not isinstance(digits, int) or isinstance(digits, bool) or not 2 <= digits <= 9:
            raise ValueError(f"calculator: digits must be an integer from 2 to 9, got {digits!r}")
        if not isinstance(ops, str) or not ops or any(c not in OPS for c in ops):
            raise ValueError(
                f"calculator: ops must be a non-empty string of the operators {OPS!r} (e.g. '*' or '+-*'), got {ops!r}"
            )
        for key, value in (("easy_fraction", easy_fraction), ("call_fraction", call_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"calculator: {key} must be a number in [0, 1], got {value!r}")
        if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
            raise ValueError(f"calculator: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.digits, self.ops = digits, "".join(dict.fromkeys(ops))
        self.easy_fraction, self.call_fraction = float(easy_fraction), float(call_fraction)
        self.eval_fraction = float(eval_fraction)
        self.set_instruction(instruction)

    def _draw(self, rng: random.Random) -> tuple[str, tuple[int, str, int]]:
        if rng.random() < self.easy_fraction:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
        else:
            lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        op = rng.choice(self.ops)
        return f"{a}{op}{b}", (a, op, b)

    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rng, (a, op, b) in self.draws(split, n, seed, self._draw, f"digits={self.digits}, ops={self.ops!r}"):
            question, exact = f"{a}{op}{b}", evaluate(a, op, b)
            row = task_row(self.ask(question), str(exact))
            if split == "sft":
                row["completion"] = self.trace(question, exact, rng)
            out.append(row)
        return out

    def trace(self, question: str, exact: int, rng: random.Random) -> list[dict[str, Any]]:
        """A cold-start completion: with probability `call_fraction` the calculator call, its result and the answer;
        else a quick guess (:func:`guess`)."""
        if rng.random() < self.call_fraction:
            call = format_call(ToolCall(TOOL, {"expression": question}), "hermes")
            return [
                {"role": "assistant", "content": call},
                {"role": "tool", "name": TOOL, "content": str(exact)},
                {"role": "assistant", "content": f"<answer>{exact}</answer>"},
            ]
        return [{"role": "assistant", "content": f"<answer>{guess(exact, rng)}</answer>"}]

    def is_correct(self, completion: Any, answer: str, **columns: Any) -> bool:
        """The final answer of the last assistant message (:func:`aha.data.answers.final_answer`) is the result
        exactly as an integer is written: ``085`` and ``+85`` are wrong, a tool's result alone is no answer."""
        got = final_answer(last_assistant_text(completion))
        return got is not None and got == str(answer).strip()
