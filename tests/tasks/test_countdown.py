import re

import pytest

from aha.tasks import TASKS, get_task
from aha.tasks.countdown import Countdown, check_expression, countdown_reward, parse_numbers

NUMS = [3, 8, 5, 2]  # target 26: 3*8+2, (8+5)*2


@pytest.mark.parametrize(
    "expr",
    ["3*8+2", "( 3 * 8 ) + 2", "(8+5)*2", "2*(5+8)", "  2 + 8*3  ", "3*8+2 = 26", "3×8+2", "((3*8)+(2))"],
)
def test_accepts_valid_solutions(expr):
    assert check_expression(expr, NUMS, 26)
    assert check_expression(expr, NUMS, "26")


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "3*3*8+2",  # 3 used twice
        "3*9-1",  # 9 and 1 not given
        "3*8+2+0",  # 0 not given
        "3*8+3",  # = 27, and 3 twice
        "8*(5-2)+2",  # = 26 but 2 used twice
        "8*3-5+5+2",  # = 26 but 5 used twice
        "(5*8-2*3)-8",  # = 26 but 8 used twice
        "3*8",  # = 24, wrong result
        "3*8+2 = 27",  # the stated value is not the target
        "3*8+2 = 26 = 26",
        "-2+28",  # unary sign and 28 not given
        "(3*8+2",
        "3*8+2)",
        "3 8 + 2",
        "3**8",
        "3.0*8+2",
        "",
        "26",  # the target itself is not a given number
        "x" * 300,
        "(" * 200 + "3" + ")" * 200,
    ],
)
def test_rejects_invalid_solutions(expr):
    assert check_expression(expr, NUMS, 26) is False


def test_exact_division():
    assert not check_expression("7/2", [7, 2], 3)  # 3.5, not 3 (no integer division)
    assert check_expression("6/3*4", [6, 3, 4], 8)
    assert check_expression("4/3*6", [6, 3, 4], 8)  # exact rational arithmetic: 4/3*6 == 8
    assert not check_expression("4/(3-3)", [4, 3, 3], 8)  # division by zero is wrong, not an error
    assert check_expression("12/(8-5)+2", [12, 8, 5, 2], 6)


def test_duplicates_in_given_numbers():
    assert check_expression("5+5", [5, 5, 1], 10)
    assert not check_expression("5+5", [5, 1], 10)


def test_parse_numbers():
    assert parse_numbers([3, "8"]) == [3, 8]
    assert parse_numbers("[3, 8, 5]") == [3, 8, 5]


def test_registered_and_params_validated():
    assert TASKS["countdown"] is Countdown
    for bad, param in [({"count": 1}, "count"), ({"count": 7}, "count"), ({"max_number": 1}, "max_number")]:
        with pytest.raises(ValueError, match=param):
            get_task("countdown", **bad)
    with pytest.raises(ValueError, match="max_target"):
        Countdown(max_target=0)
    with pytest.raises(ValueError, match="eval_fraction"):
        Countdown(eval_fraction=1.0)
    with pytest.raises(ValueError, match="nope"):
        get_task("countdown", nope=1)
    with pytest.raises(ValueError, match="split"):
        Countdown().rows("test", 1, 0)


def test_rows_solvable_deterministic_and_disjoint():
    task = Countdown(count=4)
    sft = task.rows("sft", 300, seed=0)
    assert sft == task.rows("sft", 300, seed=0)
    assert sft != task.rows("sft", 300, seed=1)
    for row in sft:
        assert set(row) == {"prompt", "answer", "numbers", "completion"}
        assert len(row["numbers"]) == 4 and all(1 <= x <= 20 for x in row["numbers"])
        assert 1 <= int(row["answer"]) <= 100
        assert str(row["numbers"]) in row["prompt"][0]["content"]
        text = row["completion"][0]["content"]
        assert text.startswith("<think>") and text.endswith("</answer>")
        assert task.is_correct(text, row["answer"], numbers=row["numbers"])  # every instance is solvable
    key = lambda r: (tuple(sorted(r["numbers"])), r["answer"])  # noqa: E731
    held_out = {key(r) for r in task.rows("eval", 300, seed=0)}
    seen = {key(r) for r in sft} | {key(r) for r in task.rows("train", 1000, seed=5)}
    assert held_out and not held_out & seen
    assert "completion" not in task.rows("train", 1, 0)[0]


def test_trace_steps_are_right():
    row = Countdown(count=3).rows("sft", 1, seed=3)[0]
    thought = row["completion"][0]["content"].split("<think>")[1].split("</think>")[0]
    for step in thought.split():
        lhs, rhs = step.split("=")
        assert check_expression(lhs, [int(x) for x in re.findall(r"\d+", lhs)], rhs)
    assert thought.split()[-1].endswith("=" + row["answer"])


def test_is_correct_needs_numbers_and_reward():
    task = Countdown()
    ok = "<think>3*8=24 24+2=26</think><answer>3*8+2</answer>"
    assert task.is_correct(ok, "26", numbers=NUMS)
    assert task.is_correct(ok, "26", numbers="[3, 8, 5, 2]")
    assert not task.is_correct("<answer>3*8</answer>", "26", numbers=NUMS)
    assert not task.is_correct("3*8+2", "26", numbers=NUMS)  # no <answer>
    with pytest.raises(ValueError, match="numbers"):
        task.is_correct(ok, "26")
    assert task.reward_columns() == ["answer", "numbers"]
    completions = [[{"role": "assistant", "content": ok}], "<answer>3*3*8+2</answer>", ok]
    assert countdown_reward(completions, ["26", "26", "27"], [NUMS, NUMS, NUMS]) == [1.0, 0.0, 0.0]
