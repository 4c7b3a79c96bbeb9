"""``final_answer``: a completion's final answer in whichever format it is written, with a fixed precedence
(``<answer>`` > ``\\boxed{}`` > a final ``#### N`` > a final "The answer is N"), and what does not count."""

import pytest

from aha.data.answers import completion_answer, final_answer, numeric_answer, stated_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        # each format alone
        ("<think>48+24=72</think><answer>72</answer>", "72"),
        ("<answer> 72 </answer>", "72"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),  # GSM8K's ending (SmolLM2 writes it)
        ("so 200 + 29 = 229 #### 229", "229"),
        ("#### $1,072.", "$1,072"),
        ("She has 3+4 = 7, so the total is $\\boxed{7}$.", "7"),
        ("The sum is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\frac{\\sqrt{2}}{2}} apples", "\\frac{\\sqrt{2}}{2}"),
        ("3 + 4 = 7. The answer is 7.", "7"),
        ("3 + 4 = 7.\nAnswer: 7", "7"),
        ("**Answer:** 72", "72"),
        ("The final answer is $72$. I hope it is correct.", "72"),
        ("The answer is: **1,234**. Hope that helps!", "1,234"),
        ("The answer is 72 apples.", "72 apples"),  # as written: numeric_answer reads the number
        ("<think>x</think>The answer is 7.", "7"),  # the answer part after the thought
        ("the count</think>\n#### 12", "12"),  # a thought the chat template opened
        # inside an <answer> block, the same formats
        ("<answer>\\boxed{5}</answer>", "5"),
        ("<answer>The answer is 5.</answer>", "5"),
        ("<answer>#### 5</answer>", "5"),
    ],
)
def test_each_format(text, expected):
    assert final_answer(text) == expected
    assert completion_answer(text, "auto") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{3} then <answer>4</answer>", "4"),  # <answer> wins over \boxed
        ("#### 3\n<answer>4</answer>", "4"),  # <answer> wins over ####
        ("The answer is 3. <answer>4</answer>", "4"),  # <answer> wins over the phrase
        ("<answer>3</answer> wait <answer>4</answer>", "4"),  # the last block
        ("The answer is 3, i.e. \\boxed{4}", "4"),  # \boxed wins over the phrase
        ("\\boxed{3}\n#### 4", "3"),  # \boxed wins over ####
        ("\\boxed{3} or rather \\boxed{4}", "4"),  # the last box
        ("The answer is 3.\n#### 4", "4"),  # a final #### wins over the phrase
        ("The answer is 3. No: the answer is 4.", "4"),  # the last phrase
        ("<think>it is \\boxed{3}</think>The answer is 4.", "4"),  # only the answer part counts
    ],
)
def test_precedence(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I have 3 apples and get 4 more, so 7",  # numbers in the reasoning, no stated answer
        "3 + 4 = 7",
        "#### Step 1\nAdd 3 and 4 to get 7.",  # a #### heading followed by more text
        "#### 7\nThen we check it twice.",  # #### mid-text: other text follows its line
        "####",
        "<think>3 + 4 = 7, the answer is 7",  # a thought cut off by the token limit
        "<think>a</think><answer>7",  # an <answer> cut off
        "<answer></answer> \\boxed{5}",  # an empty block is no answer
        "\\boxed{\\frac{1}{2}",  # an unbalanced (truncated) box
        "The answer is",
        "",
    ],
)
def test_no_answer(text):
    assert final_answer(text) is None


def test_prefilled_thought_without_tags_has_no_answer():
    assert final_answer("I think the answer is 7", prefilled=True) is None
    assert final_answer("I think the answer is 7") == "7"
    assert completion_answer("I think the answer is 7", "auto", prefilled=True) is None


def test_stated_answer_ignores_answer_tags():
    assert stated_answer("<answer>7</answer>") is None
    assert stated_answer("x \\boxed{7}") == "7"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("72", "72"),
        ("$1,234.00", "1234"),
        ("72 apples", "72"),
        ("$72 dollars.", "72"),
        ("-3", "-3"),
        ("72.0", "72"),
        ("8 5", None),
        ("seventy-two", None),
        ("5, then 7", None),
        ("1/2", None),
        (None, None),
    ],
)
def test_numeric_answer(text, expected):
    assert numeric_answer(text) == expected
