"""The calculator tool: exact arithmetic, float noise rounded, everything that is not arithmetic refused (fast),
sizes bounded, and its errors reach the model as error results through a Toolbox."""

from __future__ import annotations

import math
import time

import pytest
from transformers.utils import get_json_schema

from aha.tools import Toolbox, ToolCall, ToolResult, calculator

ALLOWED = "only numbers and + - * / // % ** ( ) are allowed"


@pytest.mark.parametrize(
    "expression,expected",
    [
        ("(12 + 7) * 3", "57"),
        ("123 * 456", "56088"),
        ("0.1 + 0.2", "0.3"),
        ("10/2", "5"),
        ("7/2", "3.5"),
        ("1/3", "0.333333333333"),
        ("10**20/2", "50000000000000000000"),  # an exact division of integers stays an exact integer
        ("2**64", "18446744073709551616"),
        ("2**-1", "0.5"),
        ("2**0.5", "1.41421356237"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("-7 % 3", "2"),
        ("7.5 % 2", "1.5"),
        ("+3 - -2", "5"),
        ("  ((1 + 2) * (3 + 4))  ", "21"),
        ("1_000 + 1", "1001"),
        ("1.5e3", "1500"),
        ("-0.0", "0"),
        ("2 ** 3 ** 2", "512"),
        ("(-2) ** 3", "-8"),
        ("1e-5 * 3", "3e-05"),
        ("3 * 1e20", "3e+20"),
    ],
)
def test_arithmetic(expression, expected):
    assert calculator(expression) == expected


def test_large_integers_are_exact():
    big = calculator("2**33000")
    assert len(big) == math.floor(33000 * math.log10(2)) + 1 == 9934
    assert big.startswith("9769153") and big[-20:] == str(pow(2, 33000, 10**20)).zfill(20)
    assert len(calculator("10**9999")) == 10_000  # past Python's own 4300-digit limit on int -> str


ATTACKS = [
    ("__import__('os')", "the call \"__import__('os')\""),
    ("__import__('os').system('id')", "the call"),
    ("().__class__", "the attribute '().__class__'"),
    ("().__class__.__bases__[0].__subclasses__()", "the call"),
    ("open('x')", "the call \"open('x')\""),
    ("lambda: 1", "the lambda 'lambda: 1'"),
    ("[x for x in (1, 2)]", "the comprehension"),
    ("(x for x in (1,))", "the comprehension"),
    ("x", "the name 'x'"),
    ("'a' * 3", "the string 'a'"),
    ("b'a'", "the bytes b'a'"),
    ("True + 1", "the constant True"),
    ("1j", "the complex number 1j"),
    ("[1, 2]", "the list"),
    ("(1,)[0]", "the subscript '(1,)[0]'"),
    ("(1, 2)", "the tuple"),
    ("1 < 2", "the comparison"),
    ("1 and 2", "the boolean operation"),
    ("1 if 1 else 2", "the conditional expression"),
    ("(y := 2)", "the assignment"),
    ("f'{1}'", "the f-string"),
    ("2 ^ 3", "the operator ^ (use ** for a power)"),
    ("1 << 2", "the operator <<"),
    ("~1", "the operator ~"),
    ("not 1", "the operator not"),
    ("10**5000 * 10**5000 + x", "the name 'x'"),  # refused before any arithmetic is done
]


@pytest.mark.parametrize("expression,what", ATTACKS)
def test_everything_else_is_refused(expression, what):
    with pytest.raises(ValueError) as e:
        calculator(expression)
    assert str(e.value).startswith(f"calculator: {ALLOWED}, not ") and what in str(e.value)


@pytest.mark.parametrize(
    "expression,match",
    [
        ("9**9**9", "the exponent is too large"),
        ("10**100000", "about 100000 digits; at most 10000"),
        ("(10**5000) * (10**5001)", "the result has about 10001 digits"),
        ("2**(2**20)", "the exponent is too large"),
        ("1.5 ** 100000", "too large for a floating-point number"),
        ("1e308 * 10", "too large for a floating-point number"),
        ("1e999", "too large for a floating-point number"),
        ("10**400 / 3", "too large for a floating-point number"),
        ("(-8) ** (1/3)", "not a real number"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("1.0 / 0.0", "division by zero"),
        ("1" * 501, "501 characters long; at most 500"),
        ("", "the expression is empty"),
        ("1 +", "is not an arithmetic expression"),
    ],
)
def test_limits_and_errors_are_fast(expression, match):
    start = time.monotonic()
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        calculator(expression)
    assert time.monotonic() - start < 0.5


def test_huge_string_is_refused_before_parsing():
    start = time.monotonic()
    with pytest.raises(ValueError, match="characters long"):
        calculator("1+" * 5_000_000 + "1")
    assert time.monotonic() - start < 0.5
    with pytest.raises(ValueError, match="must be a string, got int"):
        calculator(12)  # type: ignore[arg-type]


def test_deep_nesting_is_an_error_or_a_value_never_a_crash():
    assert calculator("-" * 400 + "1") == "1"
    with pytest.raises(ValueError, match="calculator"):
        calculator("(" * 240 + "1" + ")" * 240)  # Python's parser refuses this much nesting


def test_schema_and_through_a_toolbox():
    schema = get_json_schema(calculator)["function"]
    assert schema["name"] == "calculator"
    assert schema["parameters"]["properties"]["expression"]["type"] == "string"
    assert "(12 + 7) * 3" in schema["parameters"]["properties"]["expression"]["description"]
    box = Toolbox([calculator])
    assert box.call(ToolCall("calculator", {"expression": "123*456"})) == ToolResult("calculator", "56088", False)
    got = box.call(ToolCall("calculator", {"expression": "__import__('os').system('id')"}))
    assert got.error and got.content.startswith(f"Error: ValueError: calculator: {ALLOWED}, not the call")
    got = box.call(ToolCall("calculator", {"expression": "9**9**9"}))
    assert got == ToolResult(
        "calculator",
        "Error: ValueError: calculator: the exponent is too large; at most 1000000 in magnitude is allowed",
        True,
    )  # noqa: E501
    assert box.call(ToolCall("calculator", {"expression": 5})).content.startswith("Error: argument 'expression'")
