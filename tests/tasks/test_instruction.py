"""Every built-in task states its answer format after the question (``instruction``: true, false or a text), and
its verifier reads the final answer in the formats people use, not only ``<answer>``."""

import pytest

from aha.data.load import data_spec, load_rows
from aha.eval.metrics import Verifier
from aha.tasks import TASKS, get_task

QUESTION_STARTS = {
    "arithmetic": "",
    "countdown": "Using the numbers",
    "wordproblems": "",
    "summarize": "Summarize the following text.",
    "coding": "Write a Python function `f`",
    "calculator": "",
}
DEFAULT_OFF = ("calculator",)
STATES = {  # what each task's default instruction asks for
    "arithmetic": ["<think>", "<answer>", "sum"],
    "countdown": ["<think>", "<answer>", "expression"],
    "wordproblems": ["<think>", "<answer>", "number"],
    "summarize": ["summary only"],
    "coding": ["<think>", "```python"],
    "calculator": ["calculator", "<answer>"],
}


def test_every_task_is_covered():
    assert sorted(TASKS) == sorted(STATES) == sorted(QUESTION_STARTS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_instruction_default_off_and_custom(name):
    on = get_task(name, instruction=True).rows("train", 3, seed=0)
    off = get_task(name, instruction=False).rows("train", 3, seed=0)
    custom = get_task(name, instruction="  Reply in French. ").rows("train", 3, seed=0)
    # the default states the format, except for the calculator task, made for the tiny model (its prompt is a token
    # per character)
    assert get_task(name).rows("train", 3, seed=0) == (off if name in DEFAULT_OFF else on)
    for a, b, c in zip(on, off, custom):
        question = b["prompt"][0]["content"]
        assert question.startswith(QUESTION_STARTS[name])
        assert a["prompt"] == [{"role": "user", "content": f"{question}\n\n{TASKS[name].default_instruction}"}]
        assert c["prompt"] == [{"role": "user", "content": f"{question}\n\nReply in French."}]
        assert {k: v for k, v in a.items() if k != "prompt"} == {k: v for k, v in b.items() if k != "prompt"}
    for word in STATES[name]:
        assert word in TASKS[name].default_instruction
    assert "<think>" not in off[0]["prompt"][0]["content"]


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("bad", ["", "   ", 1, None])
def test_bad_instruction_names_the_option(name, bad):
    with pytest.raises(ValueError, match=f"{name}: instruction must be true .*false .*text"):
        get_task(name, instruction=bad)


def test_the_same_problems_with_or_without_the_instruction():
    # the held-out split is chosen from the question alone, so the option cannot leak eval problems into training
    on = [r["answer"] for r in get_task("arithmetic").rows("eval", 50, seed=0)]
    assert on == [r["answer"] for r in get_task("arithmetic", instruction=False).rows("eval", 50, seed=0)]


def test_instruction_from_a_spec_and_a_data_string():
    rows = load_rows({"task": "wordproblems", "n": 2, "instruction": False})
    assert "\n\n" not in rows[0]["prompt"][0]["content"]
    spec = data_spec("arithmetic:instruction=false", limit=2)
    assert load_rows(spec)[0]["prompt"][0]["content"].isascii() and "<think>" not in str(load_rows(spec))


@pytest.mark.parametrize(
    "completion, correct",
    [
        ("Natalia has 40+189 = 229 apples now.\n#### 229", True),  # SmolLM2-135M-Instruct's own ending
        ("She has $\\boxed{229}$ apples.", True),
        ("40 + 189 = 229. The answer is 229.", True),
        ("The answer is 229 apples.", True),
        ("Answer: $229", True),
        ("<think>40+189=229</think><answer>229</answer>", True),
        ("<think>40+189=229</think><answer>228</answer> #### 229", False),  # the <answer> block wins
        ("40 + 189 = 229", False),  # a number in the reasoning is not a stated answer
        ("#### 229\nOr maybe 230.", False),  # #### mid-text
        ("The answer is 230.", False),
    ],
)
def test_wordproblems_reads_the_common_formats(completion, correct):
    task = get_task("wordproblems")
    assert task.is_correct(completion, "229") is correct
    assert task.is_correct(completion, "Natalia has 40+189 = <<40+189=229>>229.\n#### 229") is correct
    assert Verifier("task", task).is_correct(completion, "229") is correct


@pytest.mark.parametrize(
    "completion, correct",
    [
        ("47+38=85\n#### 85", True),
        ("\\boxed{85}", True),
        ("The answer is 85.", True),
        ("<answer>85</answer>", True),
        ("The answer is 085.", False),  # the sum exactly as an integer is written
        ("7+8=15 4+3+1=8 so 85", False),
    ],
)
def test_arithmetic_reads_the_common_formats(completion, correct):
    assert get_task("arithmetic").is_correct(completion, "85") is correct


def test_countdown_reads_the_common_formats():
    task, numbers = get_task("countdown"), [3, 8, 5, 2]
    for text in ("\\boxed{3*8+2}", "The answer is 3*8+2.", "#### 3*8+2 = 26", "<answer>(5+8)*2</answer>"):
        assert task.is_correct(text, "26", numbers=numbers), text
    assert not task.is_correct("3*8+2 = 26", "26", numbers=numbers)  # no stated answer
    assert not task.is_correct("The answer is 3*8.", "26", numbers=numbers)


def test_verifier_extracts_the_final_answer_of_any_format():
    v = Verifier("task", get_task("wordproblems"))
    assert v.extract("so 229\n#### 229") == "229" and v.extract("\\boxed{7}") == "7" and v.extract("so 7") is None
