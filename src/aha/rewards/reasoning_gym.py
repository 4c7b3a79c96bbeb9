"""``rg_score``: reasoning-gym's own verifier as a reward, on rows of a ``rg:NAME`` task (:mod:`aha.tasks.reasoning_gym`).

The row's ``rg_entry`` and ``rg_config`` columns carry the generator's entry and configuration; the completion's final
answer (:func:`aha.data.answers.final_answer`, or only ``<answer>…</answer>`` with ``answer_format="tag"``) is scored
by the generator's ``score_answer`` (in [0, 1], partial credit included). Compose it with the format rewards, e.g.
``rewards: [rg_score, {name: format, weight: 0.5}]``. reasoning-gym is imported only when a row is scored.
"""

from __future__ import annotations

from typing import Any

from aha.data.prompts import completion_text
from aha.rewards.builtin import ANSWER_READERS, choice, make_check
from aha.rewards.registry import reward
from aha.tasks.reasoning_gym import CONFIG_COLUMN, ENTRY_COLUMN, score


def rg_scores(
    name: str, completions: list[Any], rg_entry: list[Any] | None, rg_config: list[Any] | None, answer_format: str
) -> list[float | None]:
    """The generator's score of each completion's final answer; None for a row without an entry (another data set's
    row in a mix of data sets). Without the columns at all, a ValueError naming the reward."""
    if rg_entry is None or rg_config is None:
        raise ValueError(
            f"reward {name!r} needs the {ENTRY_COLUMN} and {CONFIG_COLUMN} columns of a reasoning-gym task: use a "
            "dataset task rg:NAME (e.g. dataset: {task: rg:chain_sum})"
        )
    read = ANSWER_READERS[choice(name, "answer_format", answer_format, sorted(ANSWER_READERS))]
    out: list[float | None] = []
    for c, entry, config in zip(completions, rg_entry, rg_config):
        out.append(None if entry is None or config is None else score(read(completion_text(c)), entry, config))
    return out


@reward(
    "rg_score",
    "reasoning-gym's score_answer (0..1, partial credit) of the final answer, on rows of an rg:NAME task",
    make_check("rg_score", {"answer_format": sorted(ANSWER_READERS)}),
)
def rg_score_reward(completions, rg_entry, rg_config, *, answer_format: str = "auto", **kwargs) -> list[float | None]:
    """r = the generator's ``score_answer(final answer, entry)``; None where the row has no ``rg_entry``.

    `answer_format`: where the final answer is read, as for ``correctness`` (``auto``: :func:`final_answer`;
    ``tag``: only the last ``<answer>…</answer>`` block)."""
    return rg_scores("rg_score", completions, rg_entry, rg_config, answer_format)
