"""Task.check passes the row's extra columns (countdown's numbers) to the verifier, in eval too."""

from aha.eval.metrics import Verifier
from aha.tasks import get_task


def test_check_uses_row_columns():
    task = get_task("countdown")
    row = task.rows("eval", 1, seed=0)[0]
    good = next(r for r in task.rows("sft", 1, seed=0))
    assert task.check(good["completion"][0]["content"], good)
    other = dict(row, numbers=[n + 100 for n in row["numbers"]])  # the same target, none of its numbers allowed
    text = f"<answer>{row['numbers'][0]}</answer>"
    assert task.check(text, row) == (str(row["numbers"][0]) == row["answer"])
    assert not task.check(text, other)


def test_verifier_passes_row_to_task():
    task = get_task("countdown")
    row = task.rows("eval", 1, seed=0)[0]
    v = Verifier("task", task)
    bad_numbers = dict(row, numbers=[997, 998])
    expr = "+".join(str(n) for n in row["numbers"])
    total = sum(row["numbers"])
    r = dict(row, answer=str(total))
    assert v.is_correct(f"<answer>{expr}</answer>", r["answer"], r)
    assert not v.is_correct(f"<answer>{expr}</answer>", r["answer"], dict(bad_numbers, answer=str(total)))


def test_arithmetic_check_equals_is_correct():
    task = get_task("arithmetic")
    row = task.rows("eval", 1, seed=0)[0]
    text = f"<think>x</think><answer>{row['answer']}</answer>"
    assert task.check(text, row) and task.is_correct(text, row["answer"])
    assert not task.check("<answer>-1</answer>", row)
