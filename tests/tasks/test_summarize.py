import re

import pytest

from aha.tasks import TASKS, get_task
from aha.tasks.summarize import Summarize, length_reward, summary_text


def test_rows():
    task = Summarize(ideal_length=60)
    sft = task.rows("sft", 200, seed=0)
    assert sft == task.rows("sft", 200, seed=0)
    for row in sft:
        assert set(row) == {"prompt", "answer", "target_length", "completion"}
        assert row["target_length"] == 60 and row["answer"] == "60"
        doc = row["prompt"][0]["content"]
        assert doc.startswith("Summarize the following text.\n\nLast ")
        assert doc.endswith("\n\nReply with the summary only.")
        summary = summary_text(row["completion"])
        assert summary and summary.endswith(".")
        for number in re.findall(r"\d+", summary):  # the trace never invents a number
            assert number in doc
    docs = {r["prompt"][0]["content"] for r in task.rows("eval", 100, seed=0)}
    assert docs and not docs & {r["prompt"][0]["content"] for r in sft + task.rows("train", 500, seed=2)}
    assert "completion" not in task.rows("train", 1, 0)[0]
    assert task.reward_columns() == ["target_length"]


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


def test_smoltldr_recipe_runs_on_the_summarize_task(tmp_path):
    """recipes/smoltldr.yaml with the built-in task its header names: the task's column does not clash with the
    length reward's ideal_length parameter, and one GRPO step (LoRA on the tiny model) runs."""
    import json
    from pathlib import Path

    from aha.cli import main

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "smoltldr.yaml"
    sets = [
        "model=tiny",
        "dataset={task: summarize, n: 16}",
        "training.max_steps=1",
        "training.max_completion_length=16",
        "training.num_generations=4",
        "training.per_device_train_batch_size=8",
        "training.gradient_accumulation_steps=1",
    ]
    out = tmp_path / "run"
    argv = ["train", str(recipe), *[x for s in sets for x in ("--set", s)], "--out", str(out), "--no-plot"]
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/length/mean" in m for m in logged)


def test_a_column_named_like_a_reward_parameter_is_still_refused():
    # what the task's `target_length` column avoids: the trainer would pass the column over the parameter
    from aha.workflows.recipe import check_columns, resolve_rewards

    rewards = resolve_rewards([{"name": "length", "ideal_length": 50}])
    check_columns(rewards, set(Summarize().rows("train", 1, 0)[0]), "task 'summarize'")
    with pytest.raises(ValueError, match="column 'ideal_length'"):
        check_columns(rewards, {"prompt", "ideal_length"}, "data")
