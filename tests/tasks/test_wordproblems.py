import re

import pytest

from aha.data.answers import gsm8k_answer
from aha.tasks import TASKS, get_task
from aha.tasks.countdown import check_expression
from aha.tasks.wordproblems import WordProblems, solution_text, think_text


def test_solution_and_trace_format():
    steps = [("Natalia sold ", "48/2", 24, " clips in May."), ("Natalia sold ", "48+24", 72, " clips altogether.")]
    assert solution_text(steps, 72) == (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
    )
    assert think_text(steps) == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether."


def test_rows_consistent_deterministic_disjoint():
    task = WordProblems()
    sft = task.rows("sft", 400, seed=0)
    assert sft == task.rows("sft", 400, seed=0) and sft != task.rows("sft", 400, seed=1)
    for row in sft:
        assert set(row) == {"prompt", "answer", "solution", "completion"}
        assert row["answer"].isdigit()
        assert gsm8k_answer(row["solution"]) == row["answer"]
        text = row["completion"][0]["content"]
        assert text.endswith(f"<answer>{row['answer']}</answer>") and "<<" not in text
        assert task.is_correct(text, row["answer"]) and task.is_correct(text, row["solution"])
        for line in row["solution"].splitlines()[:-1]:  # every annotated calculation is right
            expr, value = line.split("<<")[1].split(">>")[0].split("=")
            assert check_expression(expr, [int(x) for x in re.findall(r"\d+", expr)], value)
    questions = {r["prompt"][0]["content"] for r in task.rows("eval", 200, seed=0)}
    seen = {r["prompt"][0]["content"] for r in sft + task.rows("train", 800, seed=3)}
    assert questions and not questions & seen
    assert "completion" not in task.rows("eval", 1, 0)[0]


def test_steps_and_max_value():
    one = WordProblems(max_steps=1).rows("train", 50, seed=0)
    assert all(len(r["solution"].splitlines()) == 2 for r in one)
    three = WordProblems(min_steps=3).rows("train", 50, seed=0)
    assert all(len(r["solution"].splitlines()) == 4 for r in three)


def test_is_correct_normalises_numbers():
    task = WordProblems()
    assert task.is_correct("<think>x</think><answer>1,234</answer>", "1234")
    assert task.is_correct("<answer>$72</answer>", "72")
    assert task.is_correct("<answer>72.0</answer>", "72")
    assert task.is_correct("<answer>72</answer>", "a\n#### 72")
    assert not task.is_correct("<answer>73</answer>", "72")
    assert not task.is_correct("72", "72")
    assert not task.is_correct("<answer>seventy-two</answer>", "72")


def test_params_validated():
    assert TASKS["wordproblems"] is WordProblems
    for params, name in [
        ({"max_value": 5}, "max_value"),
        ({"max_steps": 4}, "max_steps"),
        ({"min_steps": 3, "max_steps": 2}, "min_steps"),
        ({"eval_fraction": 0}, "eval_fraction"),
    ]:
        with pytest.raises(ValueError, match=name):
            get_task("wordproblems", **params)
