import re

import pytest

from aha.tasks import TASKS, get_task
from aha.tasks.summarize import Summarize, length_reward, summary_text


def test_rows():
    task = Summarize(ideal_length=60)
    sft = task.rows("sft", 200, seed=0)
    assert sft == task.rows("sft", 200, seed=0)
    for row in sft:
        assert set(row) == {"prompt", "answer", "ideal_length", "completion"}
        assert row["ideal_length"] == 60 and row["answer"] == "60"
        doc = row["prompt"][0]["content"]
        assert doc.startswith("Summarize the following text.\n\nLast ")
        summary = summary_text(row["completion"])
        assert summary and summary.endswith(".")
        for number in re.findall(r"\d+", summary):  # the trace never invents a number
            assert number in doc
    docs = {r["prompt"][0]["content"] for r in task.rows("eval", 100, seed=0)}
    assert docs and not docs & {r["prompt"][0]["content"] for r in sft + task.rows("train", 500, seed=2)}
    assert "completion" not in task.rows("train", 1, 0)[0]
    assert task.reward_columns() == ["ideal_length"]


def test_sentence_counts():
    rows = Summarize(min_sentences=2, max_sentences=2).rows("train", 20, seed=0)
    assert all(r["prompt"][0]["content"].count(". ") == 1 for r in rows)


def test_length_reward_and_is_correct():
    answer_50 = "<think>notes</think><answer>" + "a" * 50 + "</answer>"
    completions = ["abc", answer_50, [{"role": "assistant", "content": "x" * 20}]]
    assert length_reward(completions, [5, 50, 50]) == [-2.0, 0.0, -30.0]
    task = Summarize(tolerance=10)
    assert task.is_correct(answer_50, "50") and task.is_correct("b" * 60, "50") and task.is_correct("b" * 40, "50")
    assert not task.is_correct("b" * 61, "50") and not task.is_correct("b" * 39, "50")
    with pytest.raises(ValueError, match="ideal length"):
        task.is_correct("abc", "fifty")


def test_params_validated():
    assert TASKS["summarize"] is Summarize
    for params, name in [
        ({"ideal_length": 0}, "ideal_length"),
        ({"tolerance": -1}, "tolerance"),
        ({"max_sentences": 99}, "max_sentences"),
        ({"min_sentences": 5, "max_sentences": 4}, "min_sentences"),
        ({"eval_fraction": 2}, "eval_fraction"),
    ]:
        with pytest.raises(ValueError, match=name):
            get_task("summarize", **params)
