"""The `coding` toy task: rows, disjoint held-out split, traces that pass their tests, and a GRPO smoke run."""

from __future__ import annotations

import pytest
from datasets import Dataset

from aha import sandbox
from aha.sandbox import SandboxError
from aha.tasks import TASKS, get_task
from aha.tasks.coding import FAMILIES, Coding


def sandbox_or_skip() -> None:
    try:
        sandbox.run("pass")  # this process's own mechanism (namespaces as root, else bubblewrap)
    except SandboxError as e:
        pytest.skip(f"no sandbox here: {e}")


def test_registered_and_validated():
    assert TASKS["coding"] is Coding
    assert isinstance(get_task("coding", n_tests=2), Coding)
    with pytest.raises(ValueError, match="n_tests"):
        get_task("coding", n_tests=0)
    with pytest.raises(ValueError, match="eval_fraction"):
        get_task("coding", eval_fraction=1.5)
    with pytest.raises(ValueError, match="split"):
        Coding().rows("test", 1, 0)


def test_rows_shape_and_determinism():
    task = Coding()
    rows = task.rows("sft", 8, seed=3)
    assert rows == task.rows("sft", 8, seed=3) and rows != task.rows("sft", 8, seed=4)
    for row in rows:
        assert set(row) == {"prompt", "answer", "tests", "completion"}
        assert row["prompt"][0]["role"] == "user" and "```python" in row["prompt"][0]["content"]
        assert row["tests"].count("assert f(") == 3
        trace = row["completion"][0]["content"]
        assert trace.startswith("<think>") and f"</think>\n```python\n{row['answer']}\n```" in trace
    assert all("completion" not in r for r in task.rows("train", 4, 0) + task.rows("eval", 4, 0))
    assert task.reward_columns() == ["answer", "tests"]


def test_eval_split_is_disjoint():
    task = Coding()
    held_out = {r["answer"] for r in task.rows("eval", 300, 0)}
    seen = {r["answer"] for split in ("sft", "train") for r in task.rows(split, 1000, 1)}
    assert held_out and seen and not held_out & seen
    assert sum(len(ks) for split in task.problems.values() for _, ks in split) == sum(len(f.params) for f in FAMILIES)


def test_reference_traces_pass_in_the_sandbox():
    sandbox_or_skip()
    task = Coding()
    for row in task.rows("sft", 6, seed=0):
        assert task.check(row["completion"][0]["content"], row)
        assert not task.check("<think>no idea</think>\n```python\ndef f(*a):\n    return None\n```", row)
        assert not task.check("no code", row)
    with pytest.raises(ValueError, match="tests"):
        task.is_correct("```python\npass\n```", "x")


def test_grpo_smoke_with_code_reward(tmp_path):
    sandbox_or_skip()
    import aha
    import aha.rewards
    from aha.models.tiny import build_tiny

    model, tokenizer = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    rows = Coding().rows("train", 8, seed=0)
    calls = []
    code = aha.rewards.get("code")

    def spy(**kwargs):
        out = code(**kwargs)
        calls.append((kwargs["tests"], out))
        return out

    spy.__name__ = "code"
    args = aha.GRPOConfig(
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=16,
        use_cpu=True,
        output_dir=str(tmp_path),
        report_to=[],
    )
    trainer = aha.GRPOTrainer(model, [spy], args, Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    assert len(calls) == 2 and all(len(tests) == 4 for tests, _ in calls)
    assert all(r is not None and 0.0 <= r <= 1.0 for _, out in calls for r in out)  # ~0: a random model
    assert "rewards/code/mean" in trainer.state.log_history[0]
