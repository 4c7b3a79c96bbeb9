"""The arithmetic task: column-by-column traces, disjoint splits, determinism and the verifier."""

import re

import pytest

from aha.tasks import get_task
from aha.tasks.arithmetic import GUESS_THOUGHT, Arithmetic, column_trace, sum_without_carry
from aha.tasks.base import in_eval_split

Q_RE = re.compile(r"^(\d+)\+(\d+)$")


def question(row):
    """The question, without the format instruction after it."""
    return row["prompt"][-1]["content"].split("\n\n")[0]


def questions(rows):
    return {question(r) for r in rows}


def operands(row):
    m = Q_RE.match(question(row))
    assert m, row["prompt"]
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize(
    "a, b, trace",
    [
        (47, 38, "7+8=15 4+3+1=8"),
        (12, 34, "2+4=6 1+3=4"),
        (5, 5, "5+5=10"),
        (0, 0, "0+0=0"),
        (999, 1, "9+1=10 9+0+1=10 9+0+1=10"),
        (1, 999, "1+9=10 0+9+1=10 0+9+1=10"),
        (1234, 56, "4+6=10 3+5+1=9 2+0=2 1+0=1"),
        (95, 7, "5+7=12 9+0+1=10"),
    ],
)
def test_column_trace(a, b, trace):
    assert column_trace(a, b) == trace


def test_sft_rows_have_the_answer_and_the_working():
    task = Arithmetic(digits=3, min_digits=1)
    rows = task.rows("sft", 300, seed=0)
    assert len(rows) == 300
    lengths = set()
    for row in rows:
        a, b = operands(row)
        lengths.add((len(str(a)), len(str(b))))
        assert row["prompt"] == [{"role": "user", "content": f"{a}+{b}\n\n{Arithmetic.default_instruction}"}]
        assert row["answer"] == str(a + b)
        [msg] = row["completion"]
        assert msg["role"] == "assistant"
        assert msg["content"] == f"<think>{column_trace(a, b)}</think><answer>{a + b}</answer>"
        assert task.is_correct(msg["content"], row["answer"])
    assert len(lengths) > 3  # min_digits=1..digits=3 mixes operand lengths


def test_operand_digits():
    for row in Arithmetic(digits=4).rows("train", 200, seed=1):
        a, b = operands(row)
        assert len(str(a)) == len(str(b)) == 4
    for row in Arithmetic(digits=1).rows("train", 50, seed=1):
        a, b = operands(row)
        assert 0 <= a <= 9 and 0 <= b <= 9


def test_train_and_eval_rows_have_no_completion():
    task = Arithmetic()
    for split in ("train", "eval"):
        for row in task.rows(split, 20, seed=0):
            assert "completion" not in row
            a, b = operands(row)
            assert row["answer"] == str(a + b)


def test_eval_split_is_disjoint_from_sft_and_train():
    task = Arithmetic(digits=2)
    eval_q = questions(task.rows("eval", 3000, seed=0))
    train_q = questions(task.rows("train", 3000, seed=0)) | questions(task.rows("train", 3000, seed=1))
    sft_q = questions(task.rows("sft", 3000, seed=0)) | questions(task.rows("sft", 3000, seed=7))
    assert len(eval_q) > 300 and len(train_q) > 3000 and len(sft_q) > 3000  # a good share of the 8100 problems
    assert not eval_q & train_q
    assert not eval_q & sft_q
    assert all(in_eval_split(q, task.eval_fraction) for q in eval_q)
    # held-out problems are roughly eval_fraction of the space
    share = len(eval_q) / (len(eval_q) + len(train_q | sft_q))
    assert 0.05 < share < 0.2


@pytest.mark.parametrize("split", ["sft", "train", "eval"])
def test_rows_are_deterministic_per_seed(split):
    task = Arithmetic(digits=3, guess_fraction=0.3)
    assert task.rows(split, 100, seed=5) == Arithmetic(digits=3, guess_fraction=0.3).rows(split, 100, seed=5)
    other = task.rows(split, 100, seed=6)
    assert other != task.rows(split, 100, seed=5)
    assert questions(other) != questions(task.rows(split, 100, seed=5))


def test_splits_differ_for_the_same_seed():
    task = Arithmetic(digits=3)
    assert questions(task.rows("sft", 100, seed=0)) != questions(task.rows("train", 100, seed=0))


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<think>7+8=15 4+3+1=8</think><answer>85</answer>", "85", True),
        ("<answer>85</answer>", "85", True),
        ("<answer> 85 </answer>", "85", True),
        ("<answer>\n85\n</answer>", "85", True),
        ("<answer>85</answer>", 85, True),
        ("<answer>85</answer>", " 85 ", True),
        ("<think>7+8=15 4+3+1=8</think><answer>84</answer>", "85", False),
        ("<think>7+8=15 4+3+1=8</think> 85", "85", False),
        ("85", "85", False),
        ("<answer>85", "85", False),
        ("85</answer>", "85", False),
        ("<answer></answer>", "85", False),
        ("<answer>8 5</answer>", "85", False),
        ("<answer>085</answer>", "85", False),
        ("<answer>85.0</answer>", "85", False),
        ("<answer>84</answer> no, wait: <answer>85</answer>", "85", True),
        ("<answer>85</answer> no, wait: <answer>84</answer>", "85", False),
        ("", "85", False),
    ],
)
def test_is_correct(completion, answer, expected):
    assert Arithmetic().is_correct(completion, answer) is expected


def test_guess_fraction_mixes_guess_and_worked_traces():
    task = Arithmetic(digits=2, guess_fraction=0.5)
    rows = task.rows("sft", 2000, seed=0)
    guesses = wrong_guesses = 0
    for row in rows:
        a, b = operands(row)
        content = row["completion"][0]["content"]
        if content.startswith(f"<think>{GUESS_THOUGHT}</think>"):
            # a guess adds column by column and forgets the carry: wrong exactly when the units carry
            guesses += 1
            assert content == f"<think>{GUESS_THOUGHT}</think><answer>{sum_without_carry(a, b)}</answer>"
            carries = (a % 10) + (b % 10) >= 10
            assert task.is_correct(content, row["answer"]) is not carries
            wrong_guesses += carries
        else:
            assert content == f"<think>{column_trace(a, b)}</think><answer>{a + b}</answer>"
            assert task.is_correct(content, row["answer"])
    assert 0.45 < guesses / len(rows) < 0.55
    assert 0.35 < wrong_guesses / guesses < 0.55  # about 45% of two-digit sums carry in the units
    assert not any(GUESS_THOUGHT in r["completion"][0]["content"] for r in Arithmetic().rows("sft", 500, seed=0))


@pytest.mark.parametrize(
    "a, b, expected", [(47, 38, 75), (65, 92, 157), (99, 1, 90), (5, 7, 12), (123, 989, 1002), (10, 20, 30)]
)
def test_sum_without_carry(a, b, expected):
    assert sum_without_carry(a, b) == expected


@pytest.mark.parametrize(
    "params, name",
    [
        (dict(digits=0), "digits"),
        (dict(digits=10), "digits"),
        (dict(digits=2.0), "digits"),
        (dict(digits=2, min_digits=3), "min_digits"),
        (dict(guess_fraction=1.0), "guess_fraction"),
        (dict(guess_fraction=-0.1), "guess_fraction"),
        (dict(eval_fraction=0.0), "eval_fraction"),
        (dict(eval_fraction=1.0), "eval_fraction"),
    ],
)
def test_bad_parameters_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        Arithmetic(**params)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        get_task("arithmetic", **params)


def test_unknown_split():
    with pytest.raises(ValueError, match=r"split.*'validation'"):
        Arithmetic().rows("validation", 1, seed=0)


def test_get_task():
    task = get_task("arithmetic", digits=3)
    assert isinstance(task, Arithmetic) and task.digits == 3
    with pytest.raises(ValueError, match="did you mean arithmetic"):
        get_task("arithmetc")
    with pytest.raises(ValueError, match="diggits"):
        get_task("arithmetic", diggits=3)
