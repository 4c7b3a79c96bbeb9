from itertools import combinations

import pytest

from aha.eval.metrics import Verifier, detect_format, extract_number, last_boxed, maj_at_k, majority_vote, pass_at_k


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
    assert v.truth("She pays 3 * 24 = 72.\n#### 1,072") == "1072"
    text = "<think>3*24=72, plus 1000</think>The answer is $1,072."
    assert v.extract(text) == "1072" and v.is_correct(text, "1072")
    assert v.is_correct("<answer>72.0</answer>", "72")
    assert not v.is_correct("<answer>73</answer>", "72")
    assert not v.is_correct("<think>72 is tempting", "72")  # truncated thought: no answer
    assert extract_number("#### 5") == "5"
    assert v.extract("no number here") is None


def test_math_verifier():
    v = Verifier("math")
    assert v.truth(r"so $x = \boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\frac{a}{b}} and \boxed{x^{2}}") == "x^{2}"
    assert v.is_correct(r"<think>half</think>It is $\boxed{0.5}$", r"\frac{1}{2}")
    assert v.is_correct(r"<answer>\frac12</answer>", r"\frac{1}{2}")
    assert not v.is_correct(r"<think>hm</think>\boxed{2}", r"\frac{1}{2}")


def test_task_verifier_and_prefill():
    from aha.tasks import get_task

    v = Verifier("task", get_task("arithmetic"))
    assert v.is_correct("<think>x</think><answer>85</answer>", "85") and v.extract("<answer>85</answer>") == "85"
    with pytest.raises(ValueError):
        Verifier("task")
    # the chat template opened the thought: a completion with no tags is an unfinished thought
    assert Verifier("gsm8k", prefilled=True).extract("thinking about 72") is None
    assert Verifier("gsm8k", prefilled=None).extract("thinking about 72") == "72"


def test_detect_format():
    assert detect_format(["a #### 3", "b #### 4"]) == "gsm8k"
    assert detect_format([r"\boxed{3}", "x"]) == "math"
    assert detect_format(["3", "-4.5", "1,000"]) == "gsm8k"
    assert detect_format([r"\frac{1}{2}", "3"]) == "math"
