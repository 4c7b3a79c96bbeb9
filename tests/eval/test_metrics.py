import json
from itertools import combinations

import pytest

from aha.eval.metrics import Verifier, maj_at_k, majority_vote, pass_at_k, verified_rows


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # pass@1 = c/n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (8, 1, 4, 0.5),  # 1 - C(7,4)/C(8,4) = 1 - 35/70
        (4, 0, 2, 0.0),
        (4, 4, 1, 1.0),
        (6, 3, 4, 1.0),  # n - c < k: every 4-subset holds a correct sample
        (10, 3, 5, 1 - 21 / 252),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_brute_force():
    for n in range(1, 8):
        for c in range(n + 1):
            correct = [i < c for i in range(n)]
            for k in range(1, n + 1):
                subsets = list(combinations(range(n), k))
                brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote_ties_go_to_first_occurrence():
    assert majority_vote(["3", "5", "5", "3"]) == 0  # 2 votes each: "3" came first
    assert majority_vote(["5", "3", "3"]) == 1
    assert majority_vote([None, "7", None]) == 1  # no answer does not vote
    assert majority_vote([None, None]) is None
    assert majority_vote(["a", "b", "c"]) == 0  # all tied


def test_maj_at_k():
    answers, correct = ["1", "2", "2", None], [False, True, True, False]
    assert maj_at_k(answers, correct, 1) is False
    assert maj_at_k(answers, correct, 2) is False  # tie 1:1, "1" seen first
    assert maj_at_k(answers, correct, 3) is True
    assert maj_at_k([None, None], [False, False], 2) is False
    with pytest.raises(ValueError):
        maj_at_k(answers, correct, 5)


def test_gsm8k_verifier():
    v = Verifier("gsm8k")
    text = "<think>3*24=72, plus 1000</think>The answer is $1,072."
    assert v.extract(text) == "1072" and v.is_correct(text, "1072") and v.is_correct(text, "1,072")
    assert v.is_correct("<answer>72.0</answer>", "72")
    assert not v.is_correct("<answer>73</answer>", "72")
    assert not v.is_correct("<think>72 is tempting", "72")  # truncated thought: no answer
    assert v.extract("no number here") is None


def test_math_verifier():
    v = Verifier("math")
    assert v.is_correct(r"<think>half</think>It is $\boxed{0.5}$", r"\frac{1}{2}")
    assert v.is_correct(r"<answer>\frac12</answer>", r"\frac{1}{2}")
    assert not v.is_correct(r"<think>hm</think>\boxed{2}", r"\frac{1}{2}")
    assert not v.is_correct("<think>never ends", r"\frac{1}{2}")


def test_task_verifier_and_prefill():
    from aha.tasks import get_task

    v = Verifier("task", get_task("arithmetic"))
    assert v.is_correct("<think>x</think><answer>85</answer>", "85") and v.extract("<answer>85</answer>") == "85"
    assert not v.is_correct("<think>x</think>85", "85")  # the task wants the <answer> block
    with pytest.raises(ValueError, match="needs a built-in task"):
        Verifier("task")
    with pytest.raises(ValueError, match="must be one of task, gsm8k, math"):
        Verifier("latex")
    # the chat template opened the thought: a completion with no tags is an unfinished thought
    assert Verifier("gsm8k", prefilled=True).extract("thinking about 72") is None
    assert Verifier("gsm8k", prefilled=None).extract("thinking about 72") == "72"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_verified_rows_detects_columns_and_format(tmp_path):
    auto = {"prompt_column": "auto", "answer_column": "auto", "answer_format": "auto"}
    gsm = _write_jsonl(
        tmp_path / "a.jsonl", [{"question": "2+2?", "answer": "#### 4"}, {"question": "q", "answer": "7"}]
    )
    rows, v = verified_rows({"path": gsm, **auto})
    assert v.format == "gsm8k" and [r["answer"] for r in rows] == ["4", "7"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "2+2?"}]  # plain text: one user message
    (tmp_path / "m.csv").write_text('problem,solution\n"Half of 1?","It is $\\boxed{\\frac{1}{2}}$"\n')
    rows, v = verified_rows({"path": str(tmp_path / "m.csv"), **auto})
    assert v.format == "math" and rows[0]["answer"] == r"\frac{1}{2}"
    # an answer format given overrides the detection; no answer_format at all means auto
    rows, v = verified_rows({"path": gsm, **auto}, answer_format="math")
    assert v.format == "math" and [r["answer"] for r in rows] == ["#### 4", "7"]
    rows, v = verified_rows({"path": gsm, "prompt_column": "question", "answer_column": "answer"})
    assert v.format == "gsm8k" and rows[0]["answer"] == "4"


def test_verified_rows_of_a_task():
    rows, v = verified_rows({"task": "arithmetic", "digits": 1, "split": "eval", "n": 5, "seed": 2})
    assert len(rows) == 5 and v.format == "task" and v.task.digits == 1
    from aha.tasks import get_task

    assert rows == get_task("arithmetic", digits=1).rows("eval", 5, 2)
    words = {"task": "wordproblems", "n": 3}
    rows, v = verified_rows(words, answer_format="gsm8k")  # graded as GSM8K numbers instead of by the task
    assert v.format == "gsm8k" and rows[0]["answer"] == get_task("wordproblems").rows("train", 3, 0)[0]["answer"]
    with pytest.raises(ValueError, match="not gsm8k answers"):
        verified_rows({"task": "coding", "n": 3}, answer_format="gsm8k")


def test_verified_rows_errors(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "label": "3", "id": 1}])
    auto = {"prompt_column": "auto", "answer_column": "auto"}
    with pytest.raises(ValueError, match="no answer column in .*bad.jsonl.*its columns: question, label, id"):
        verified_rows({"path": bad, **auto})
    with pytest.raises(ValueError, match="grading needs answer_column"):
        verified_rows({"path": bad, "prompt_column": "question"})
    with pytest.raises(ValueError, match="answer format 'task' needs a built-in task, not data"):
        verified_rows({"path": bad, **auto}, answer_format="task")
    with pytest.raises(ValueError, match="answer format must be one of task, gsm8k, math"):
        verified_rows({"task": "arithmetic"}, answer_format="latex")
    with pytest.raises(ValueError, match="must be a mapping"):
        verified_rows("arithmetic")
