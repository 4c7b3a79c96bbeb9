"""What a built-in verifiable task is: an offline generator of problems, traces and a verifier."""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

SPLITS = ("sft", "train", "eval")


def task_row(question: str, answer: str, trace: str | None = None, **columns: Any) -> dict[str, Any]:
    """One task row in TRL's conversational form: the question as the user's message, the ground truth, the task's
    other columns, and (the ``sft`` split) the worked-out `trace` as the assistant's completion."""
    row: dict[str, Any] = {"prompt": [{"role": "user", "content": question}], "answer": answer, **columns}
    if trace is not None:
        row["completion"] = [{"role": "assistant", "content": trace}]
    return row


def instruction_text(task: str, value: bool | str, default: str) -> str | None:
    """The format instruction a task's `instruction` option selects: the task's `default` (True), none (False) or
    the given text; a ValueError naming the task otherwise."""
    if value is True:
        return default
    if value is False:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(
        f"{task}: instruction must be true (state the answer format), false (the bare question) or a non-empty "
        f"text to put after each question, got {value!r}"
    )


def reasoning_instruction(what: str) -> str:
    """The R1 format stated to the model: think in ``<think>``, then only the final `what` in ``<answer>``."""
    return f"Think step by step in <think> </think>, then give only the final {what} in <answer> </answer>."


def in_eval_split(key: str, eval_fraction: float) -> bool:
    """Stable hash partition of the problem space: a problem is held out iff this is True.

    Training and SFT problems are drawn only where it is False, so the evaluation split is disjoint
    from training by construction, whatever the sample sizes and seeds.
    """
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return (h % 10_000) < eval_fraction * 10_000


class Task(ABC):
    """A verifiable task. Rows are dicts in TRL's conversational form:

    ``{"prompt": [{"role": "user", "content": question}], "answer": str, "completion": trace}``
    (``completion`` only in the ``sft`` split; the question ends with the format instruction, see ``ask``).
    """

    name: str = ""
    description: str = ""
    # The answer format each question states (its ``instruction`` option: True this text, False none, or a text of
    # its own), after the question in the user's message, as DeepSeek-R1's usage notes advise (no system prompt).
    default_instruction: str = ""
    instruction: str | None = None

    def set_instruction(self, value: bool | str) -> None:
        """Checks and stores the ``instruction`` option (see ``default_instruction``)."""
        self.instruction = instruction_text(self.name, value, self.default_instruction)

    def ask(self, question: str) -> str:
        """The user's message for `question`: the question, then the format instruction when there is one."""
        return f"{question}\n\n{self.instruction}" if self.instruction else question

    @abstractmethod
    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        """`n` rows of `split` (one of SPLITS), deterministic in `seed`."""

    @abstractmethod
    def is_correct(self, completion: str, answer: str, **columns: Any) -> bool:
        """Does the completion's final answer equal the ground truth? `columns`: the row's other
        columns named by ``reward_columns()`` (e.g. countdown's ``numbers``)."""

    def check(self, completion: str, row: dict[str, Any]) -> bool:
        """``is_correct`` on a dataset row: passes the answer and the other columns the task needs."""
        extra = {c: row[c] for c in self.reward_columns() if c != "answer" and c in row}
        return bool(self.is_correct(completion, row["answer"], **extra))

    def reward_columns(self) -> list[str]:
        return ["answer"]

    def draws(
        self, split: str, n: int, seed: int, draw: Callable[[random.Random], tuple[str, Any] | None], what: str = ""
    ) -> Iterator[tuple[random.Random, Any]]:
        """Yield (rng, item) `n` times for `split`: ``draw(rng)`` returns (key, item) or None to skip; an item
        is kept when its key's hash partition matches the split (``eval`` only held-out keys, the others
        never). Each split has its own seeded stream; the consumer may keep using `rng` for the kept item."""
        if split not in SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; choose from {SPLITS}")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        kept = tries = 0
        eval_fraction = getattr(self, "eval_fraction", 0.1)
        while kept < n:
            tries += 1
            if tries > 1000 * n + 10_000:
                raise ValueError(f"{self.name}: cannot draw {n} {split} items{' with ' + what if what else ''}")
            got = draw(rng)
            if got is None or in_eval_split(got[0], eval_fraction) != (split == "eval"):
                continue
            kept += 1
            yield rng, got[1]
