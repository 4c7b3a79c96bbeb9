import pytest

from aha import parse_reasoning
from aha.data.answers import (
    boxed_answer,
    completion_answer,
    detect_answer_format,
    extract_answer,
    gsm8k_answer,
    is_number,
    last_number,
    normalize_number,
    reference_answer,
)


def test_think_then_answer_tags():
    r = parse_reasoning("<think>7+8=15 4+3+1=8</think><answer>85</answer>")
    assert r.thought == "7+8=15 4+3+1=8" and r.answer == "85" and r.format_ok and not r.truncated


def test_think_then_free_text():
    r = parse_reasoning("<think>\nLet me add.\n</think>\n\nThe sum is 85.")
    assert r.thought == "Let me add." and r.answer == "The sum is 85." and r.format_ok


def test_reasoning_style():
    r = parse_reasoning("<reasoning>\n2 and 2\n</reasoning>\n<answer>\n4\n</answer>\n")
    assert r.thought == "2 and 2" and r.answer == "4" and r.format_ok


def test_missing_closing_tag_is_truncated():
    r = parse_reasoning("<think>first 7+8=15 then 4+3")
    assert r.thought == "first 7+8=15 then 4+3" and r.answer == "" and r.truncated and not r.format_ok


def test_unclosed_answer_is_truncated():
    r = parse_reasoning("<think>ok</think><answer>12")
    assert r.answer == "12" and r.truncated and not r.format_ok


def test_prefilled_think():
    r = parse_reasoning("The user wants 2+2.\n</think>\n\n4")
    assert r.prefilled and r.thought == "The user wants 2+2." and r.answer == "4" and r.format_ok


def test_prefilled_think_with_answer_tags():
    r = parse_reasoning("hmm</think><answer>7</answer>")
    assert r.prefilled and r.answer == "7" and r.format_ok


def test_several_think_blocks():
    r = parse_reasoning("<think>a</think>maybe 3<think>b</think> 5")
    assert r.blocks == ("a", "b") and r.thought == "a\n\nb" and r.answer == "5" and not r.format_ok


def test_no_tags():
    r = parse_reasoning("  just 42 \n")
    assert r.thought == "" and r.answer == "just 42" and not r.format_ok and not r.has_thought


def test_empty_thought_is_well_formed():
    r = parse_reasoning("<think>\n\n</think>\n\n42")
    assert r.thought == "" and r.answer == "42" and r.format_ok


@pytest.mark.parametrize(
    "text",
    [
        "hello <think>x</think><answer>1</answer>",  # text before the thought
        "<think>x</think><answer>1</answer> trailing",  # text after the answer
        "<think>x</think><answer>1</answer><answer>2</answer>",  # two answers
        "<think>x</think>",  # no answer
        "<think>x</think><answer> </answer>",  # empty answer
    ],
)
def test_not_well_formed(text):
    assert not parse_reasoning(text).format_ok


def test_last_answer_block_wins():
    assert parse_reasoning("<think>x</think><answer>1</answer><answer>2</answer>").answer == "2"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,234", "1234"),
        ("#### 72", "72"),
        ("####72", "72"),
        ("#### -5", "-5"),
        ("#### $1,000.00", "1000"),
        ("#### 0.50", "0.5"),
        ("#### 72\nThe answer is above.", "72"),
        ("first #### 3\nthen #### 4", "4"),
        ("#### 7.", "7"),
        ("#### 1/2", "1/2"),  # not a plain number: returned as written
        ("no marker here: 72", None),
        ("####   ", None),
        ("", None),
    ],
)
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{5}", "5"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\sqrt{x^{2}+1}}", r"\sqrt{x^{2}+1}"),
        (r"\boxed{ x^{2} }", "x^{2}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not count
        (r"\boxed {4}", "4"),
        (r"\boxed{a}{b}", "a"),
        (r"\fbox{3}", "3"),
        (r"the answer is $\boxed 5$.", "5"),
        (r"\boxed{\frac{1}{2}", None),  # unbalanced (a truncated completion)
        (r"\boxed{1} and \boxed{", None),  # the last one is unbalanced
        (r"\boxed{}", None),
        (r"\boxeds{3}", None),
        ("no box", None),
        (r"\boxed{\text{(A)}}", r"\text{(A)}"),
    ],
)
def test_boxed_answer(text, expected):
    assert boxed_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234", "1234"),
        (" $72 ", "72"),
        ("72.0", "72"),
        ("+7", "7"),
        ("-0", "0"),
        ("007", "7"),
        ("3.140", "3.14"),
        (".5", "0.5"),
        ("-.25", "-0.25"),
        ("x+1", "x+1"),
        ("1e3", "1e3"),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_extract_answer():
    assert extract_answer("<think>x</think><answer> 85 </answer>") == "85"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer("85") is None and extract_answer("<answer>85") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 apples cost $1,072.", "1072"),
        ("1,2,3", "3"),  # not a thousands group: three numbers
        ("12,34", "34"),
        ("5-3", "3"),  # a minus between two terms is no sign
        ("x = -4", "-4"),
        ("(2)-1", "1"),
        ("half is .5, or -.25 less", "-0.25"),
        ("72.0 then 7.", "7"),
        ("no digits", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_is_number():
    assert is_number("1,234") and is_number(" $72 ") and is_number("-0.5") and is_number(".5")
    assert not is_number("1/2") and not is_number("1e3") and not is_number("") and not is_number("x")


@pytest.mark.parametrize(
    "text, fmt, expected",
    [
        ("<think>3*24=72, plus 1000</think>The answer is $1,072.", "gsm8k", "1072"),
        ("<answer>72.0</answer>", "gsm8k", "72"),
        ("<think>hm</think>So \\boxed{12} apples, 3 left", "gsm8k", "12"),  # the box wins over later numbers
        ("<think>hm</think>work 5 #### 7 done", "gsm8k", "7"),  # the #### tail wins
        ("<think>72 is tempting", "gsm8k", None),  # a thought cut off: no answer part
        ("<think>a</think>no number", "gsm8k", None),
        ("<think>half</think>It is $\\boxed{\\frac{1}{2}}$", "math", "\\frac{1}{2}"),
        ("<answer>\\frac12</answer>", "math", "\\frac12"),
        ("<think>x</think>", "math", None),
        ("<think>x</think><answer>85</answer>", "tag", "85"),
        ("85", "tag", None),  # the tag format needs the <answer> block
    ],
)
def test_completion_answer(text, fmt, expected):
    assert completion_answer(text, fmt) == expected


def test_completion_answer_prefilled_and_errors():
    # the chat template opened the thought: a completion with no tags is an unfinished thought
    assert completion_answer("thinking about 72", "gsm8k", prefilled=True) is None
    assert completion_answer("thinking about 72", "gsm8k", prefilled=None) == "72"
    with pytest.raises(ValueError, match="answer format must be one of auto, tag, gsm8k, math"):
        completion_answer("1", "latex")


@pytest.mark.parametrize(
    "text, fmt, expected",
    [
        ("She pays 3 * 24 = 72.\n#### 1,072", "gsm8k", "1072"),
        ("1,000", "gsm8k", "1000"),  # a plain number is its own answer
        ("no final answer", "gsm8k", None),
        ("#### ", "gsm8k", None),
        ("so $x = \\boxed{\\frac{1}{2}}$.", "math", "\\frac{1}{2}"),
        ("\\frac{1}{2}", "math", "\\frac{1}{2}"),  # free-form (MATH-500's answer column)
        ("\\boxed{\\frac{1}{2}", "math", None),  # unbalanced
        ("  ", "math", None),
    ],
)
def test_reference_answer(text, fmt, expected):
    assert reference_answer(text, fmt) == expected


def test_reference_answer_rejects_unknown_format():
    with pytest.raises(ValueError, match="gsm8k, math"):
        reference_answer("1", "task")


def test_detect_answer_format():
    assert detect_answer_format(["a #### 3", "b #### 4"]) == "gsm8k"
    assert detect_answer_format(["\\boxed{3}", "x"]) == "math"
    assert detect_answer_format(["3", "-4.5", "1,000"]) == "gsm8k"
    assert detect_answer_format(["\\frac{1}{2}", "3"]) == "math"
    assert detect_answer_format([]) == "math"
