import pytest

from aha.data.answers import boxed_answer, gsm8k_answer, normalize_number


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
        ("x+1", "x+1"),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected
