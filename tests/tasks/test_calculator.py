"""The calculator task: multi-digit arithmetic whose cold-start traces call the calculator tool or guess."""

import json
import re

import pytest

from aha.data.load import data_spec, load_rows
from aha.tasks import TASKS, get_task
from aha.tasks.calculator import Calculator, guess, last_assistant_text

EXPR = re.compile(r"^(\d+)([-+*])(\d+)$")


def value(question: str) -> int:
    a, op, b = EXPR.match(question).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b) if op == "-" else int(a) * int(b)


def test_registered_with_its_tools():
    assert TASKS["calculator"] is Calculator
    assert get_task("calculator").tools == ("calculator",)
    assert load_rows({"task": "calculator", "split": "train", "n": 3})[0]["prompt"][0]["role"] == "user"
    assert data_spec("calculator:digits=4,ops=+-*")["ops"] == "+-*"


def test_questions_are_bare_expressions_with_exact_answers():
    rows = get_task("calculator").rows("train", 200, seed=0)
    for r in rows:
        question = r["prompt"][0]["content"]
        a, op, b = EXPR.match(question).groups()
        assert op == "*" and len(a) == len(b) == 3
        assert r["answer"] == str(value(question)) and "completion" not in r
    mixed = get_task("calculator", digits=2, ops="+-*").rows("train", 300, seed=0)
    ops = {EXPR.match(r["prompt"][0]["content"]).group(2) for r in mixed}
    assert ops == {"+", "-", "*"}
    assert any(r["answer"].startswith("-") for r in mixed)  # a - b < 0: the answer as Python writes it
    assert all(r["answer"] == str(value(r["prompt"][0]["content"])) for r in mixed)


def test_easy_fraction_draws_one_digit_problems():
    rows = get_task("calculator", easy_fraction=0.3).rows("train", 1000, seed=0)
    easy = [r for r in rows if len(r["prompt"][0]["content"]) == 3]  # "7*8"
    assert 0.25 < len(easy) / len(rows) < 0.35
    assert all(len(r["prompt"][0]["content"]) == 7 for r in rows if r not in easy)
    assert not any(len(r["prompt"][0]["content"]) == 3 for r in get_task("calculator").rows("train", 300, seed=0))


def test_sft_traces_call_the_tool_or_guess():
    task = get_task("calculator", call_fraction=0.4, easy_fraction=0.2)
    rows = task.rows("sft", 1000, seed=0)
    calls = [r for r in rows if len(r["completion"]) == 3]
    assert 0.35 < len(calls) / len(rows) < 0.45
    for r in calls:
        question, answer = r["prompt"][0]["content"], r["answer"]
        first, tool, last = r["completion"]
        assert first["role"] == "assistant" and first["content"].startswith("<tool_call>")
        body = json.loads(first["content"].removeprefix("<tool_call>").removesuffix("</tool_call>"))
        assert body == {"name": "calculator", "arguments": {"expression": question}}
        assert tool == {"role": "tool", "name": "calculator", "content": answer}
        assert last == {"role": "assistant", "content": f"<answer>{answer}</answer>"}
        assert task.check(r["completion"], r)
    guesses = [r for r in rows if len(r["completion"]) == 1]
    assert len(calls) + len(guesses) == len(rows)
    hard = [r for r in guesses if len(r["prompt"][0]["content"]) == 7]
    easy = [r for r in guesses if len(r["prompt"][0]["content"]) == 3]
    assert hard and easy
    for r in guesses:
        (msg,) = r["completion"]
        assert msg["role"] == "assistant" and re.fullmatch(r"<answer>-?\d+</answer>", msg["content"])
        said = msg["content"][len("<answer>") : -len("</answer>")]
        assert len(said) == len(r["answer"]) and said[: (len(said) + 1) // 2] == r["answer"][: (len(said) + 1) // 2]
    assert all(task.check(r["completion"], r) for r in easy)  # one digit by one digit: a guess is right
    wrong = sum(not task.check(r["completion"], r) for r in hard)
    assert wrong / len(hard) > 0.9  # a multi-digit guess is usually wrong


def test_call_fraction_extremes():
    assert all(len(r["completion"]) == 3 for r in get_task("calculator", call_fraction=1.0).rows("sft", 50, seed=0))
    assert all(len(r["completion"]) == 1 for r in get_task("calculator", call_fraction=0.0).rows("sft", 50, seed=0))


def test_guess_keeps_the_leading_half():
    import random

    rng = random.Random(0)
    assert guess(7, rng) == 7 and guess(56, rng) == 56 and guess(-12, rng) == -12
    got = [guess(299114, rng) for _ in range(20)]
    assert all(str(g).startswith("299") and len(str(g)) == 6 for g in got) and len(set(got)) > 10
    assert all(str(guess(-4321, rng)).startswith("-43") for _ in range(5))


def test_eval_split_is_disjoint_and_deterministic():
    task = get_task("calculator", digits=2, easy_fraction=0.2)
    held = {r["prompt"][0]["content"] for r in task.rows("eval", 100, seed=0)}
    for split in ("train", "sft"):
        assert not held & {r["prompt"][0]["content"] for r in task.rows(split, 500, seed=1)}
    assert task.rows("sft", 20, seed=3) == task.rows("sft", 20, seed=3)
    assert task.rows("sft", 20, seed=3) != task.rows("sft", 20, seed=4)


@pytest.mark.parametrize(
    "completion, correct",
    [
        ("<answer>299114</answer>", True),
        ("<answer>299115</answer>", False),
        ("<answer>0299114</answer>", False),  # the result exactly as an integer is written
        ([{"role": "assistant", "content": "<answer>299114</answer>"}], True),
        (
            [
                {"role": "assistant", "content": '<tool_call>{"name": "calculator"}</tool_call>'},
                {"role": "tool", "name": "calculator", "content": "299114"},
                {"role": "assistant", "content": "The answer is 299114."},
            ],
            True,
        ),
        # the last assistant message answers, not an earlier one, and not the tool
        ([{"role": "assistant", "content": "<answer>299114</answer>"}, {"role": "assistant", "content": "hm"}], False),
        ([{"role": "assistant", "content": "<tool_call>{}</tool_call>"}, {"role": "tool", "content": "299114"}], False),
        ([{"role": "tool", "content": "<answer>299114</answer>"}], False),
    ],
)
def test_is_correct_reads_the_last_assistant_message(completion, correct):
    assert get_task("calculator").is_correct(completion, "299114") is correct


def test_last_assistant_text():
    assert last_assistant_text("x") == "x" and last_assistant_text({"content": "y"}) == "y"
    assert last_assistant_text([{"role": "tool", "content": "1"}]) == ""
    with pytest.raises(TypeError, match="a completion must be a string or a list of messages"):
        last_assistant_text(3)


@pytest.mark.parametrize(
    "params, culprit",
    [
        ({"digits": 1}, "digits must be an integer from 2 to 9"),
        ({"digits": "3"}, "digits must be"),
        ({"ops": "/"}, "ops must be a non-empty string of the operators"),
        ({"ops": ""}, "ops must be"),
        ({"easy_fraction": 1.5}, "easy_fraction must be a number in"),
        ({"call_fraction": -0.1}, "call_fraction must be a number in"),
        ({"call_fraction": True}, "call_fraction must be"),
        ({"eval_fraction": 0.0}, "eval_fraction must be in"),
        ({"instruction": ""}, "instruction must be true"),
        ({"guess_fraction": 0.5}, "guess_fraction"),
    ],
)
def test_bad_options_name_the_culprit(params, culprit):
    with pytest.raises(ValueError, match=f"calculator.*{re.escape(culprit)}"):
        get_task("calculator", **params)


def test_instruction_option():
    bare = get_task("calculator").rows("train", 2, seed=0)
    told = get_task("calculator", instruction=True).rows("train", 2, seed=0)
    for b, t in zip(bare, told):
        assert t["prompt"][0]["content"] == b["prompt"][0]["content"] + "\n\n" + Calculator.default_instruction
