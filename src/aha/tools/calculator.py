"""The ``calculator`` tool: safe arithmetic on numbers, never ``eval``.

The expression is parsed with ``ast.parse(expression, mode="eval")`` and its tree walked: only int and float
literals, ``+ - * / // % **``, unary ``+``/``-`` and parentheses are allowed. Anything else (names, calls,
attributes, subscripts, strings, lambdas, comprehensions, comparisons, other operators) is refused before any
arithmetic is done. Sizes are bounded so that no expression can hang or exhaust memory: at most
:data:`MAX_LENGTH` characters, exponents of at most :data:`MAX_EXPONENT`, and integer results of at most
:data:`MAX_DIGITS` digits, with the size of a power estimated *before* it is computed (``9**9**9`` is refused at
once).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from decimal import Decimal

MAX_LENGTH = 500  # characters of an expression
MAX_DIGITS = 10_000  # decimal digits of an integer result (and of every intermediate one)
MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))
MAX_EXPONENT = 1_000_000  # magnitude of an exponent
ALLOWED = "calculator: only numbers and + - * / // % ** ( ) are allowed, not {what}"

BINARY: dict[type[ast.operator], tuple[str, Callable[[int | float, int | float], int | float]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}
REFUSED_OPERATORS = {
    ast.BitXor: "^ (use ** for a power)",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Not: "not",
}
WHAT = {  # how a refused node is named in the error
    ast.Name: "the name",
    ast.Call: "the call",
    ast.Attribute: "the attribute",
    ast.Subscript: "the subscript",
    ast.Lambda: "the lambda",
    ast.ListComp: "the comprehension",
    ast.SetComp: "the comprehension",
    ast.DictComp: "the comprehension",
    ast.GeneratorExp: "the comprehension",
    ast.Compare: "the comparison",
    ast.BoolOp: "the boolean operation",
    ast.IfExp: "the conditional expression",
    ast.NamedExpr: "the assignment",
    ast.JoinedStr: "the f-string",
    ast.List: "the list",
    ast.Tuple: "the tuple",
    ast.Set: "the set",
    ast.Dict: "the dict",
    ast.Starred: "the starred expression",
}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (integers keep every digit) and return the result.

    Args:
        expression: an arithmetic expression such as "(12 + 7) * 3", with numbers and + - * / // % ** ( ) only

    Returns:
        The result, e.g. "57"; a division that leaves no remainder gives an integer ("10/2" gives "5").
    """
    if not isinstance(expression, str):
        raise ValueError(f"calculator: the expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_LENGTH:
        raise ValueError(
            f"calculator: the expression is {len(expression)} characters long; at most {MAX_LENGTH} are allowed"
        )
    text = expression.strip()
    if not text:
        raise ValueError("calculator: the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"calculator: {text!r} is not an arithmetic expression ({e.msg})") from e
    validate(tree, text)
    try:
        return format_number(evaluate(tree.body, text))
    except RecursionError as e:
        raise ValueError("calculator: the expression is nested too deeply") from e


def describe(node: ast.AST, source: str) -> str:
    """How the error names a node that is not allowed: what it is and its text."""
    segment = ast.get_source_segment(source, node) or ""
    segment = segment if len(segment) <= 40 else segment[:37] + "..."
    if isinstance(node, ast.Constant):
        kind = {str: "the string", bytes: "the bytes", bool: "the constant", complex: "the complex number"}
        return f"{kind.get(type(node.value), 'the constant')} {segment}"
    what = WHAT.get(type(node), f"the {type(node).__name__} expression")
    return f"{what} {segment!r}"


def allowed(node: ast.AST) -> bool:
    """Is `node` one of the few an arithmetic expression is made of?"""
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.UAdd, ast.USub))
    if isinstance(node, ast.BinOp):
        return type(node.op) in BINARY
    return isinstance(node, (ast.Expression, ast.operator, ast.unaryop))


def validate(tree: ast.Expression, source: str) -> None:
    """Refuse the first node that is not allowed (ast.walk: no recursion), before any arithmetic is done."""
    for node in ast.walk(tree):
        if allowed(node):
            continue
        op = getattr(node, "op", None)
        if op is not None and type(op) in REFUSED_OPERATORS:
            raise ValueError(ALLOWED.format(what=f"the operator {REFUSED_OPERATORS[type(op)]}"))
        raise ValueError(ALLOWED.format(what=describe(node, source)))


def evaluate(node: ast.expr, source: str) -> int | float:
    """The value of a node of a validated tree; ValueError for a result out of bounds (and, should an unvalidated
    tree come here, for a node that is not allowed)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return checked(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = evaluate(node.operand, source)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = evaluate(node.left, source), evaluate(node.right, source)
        return apply(type(node.op), left, right)
    raise ValueError(ALLOWED.format(what=describe(node, source)))


def apply(op: type[ast.operator], left: int | float, right: int | float) -> int | float:
    symbol, fn = BINARY[op]
    if op is ast.Pow:
        check_power(left, right)
    try:
        if op is ast.Div and isinstance(left, int) and isinstance(right, int) and right != 0 and left % right == 0:
            return checked(left // right)  # an exact division of integers stays an integer
        return checked(fn(left, right))
    except ZeroDivisionError as e:
        raise ValueError("calculator: division by zero") from e
    except OverflowError as e:
        raise ValueError(f"calculator: the result of {symbol} is too large for a floating-point number") from e


def check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power whose exponent or result would be too large, before computing it."""
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"calculator: the exponent is too large; at most {MAX_EXPONENT} in magnitude is allowed")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_BITS:
            raise ValueError(
                f"calculator: the result would have about {bits * math.log10(2):.0f} digits; at most {MAX_DIGITS} "
                "are allowed"
            )


def checked(value: int | float | complex) -> int | float:
    """`value` when it is within bounds: an int of at most MAX_DIGITS digits, a finite float, not complex."""
    if isinstance(value, complex):
        raise ValueError("calculator: the result is not a real number (a fractional power of a negative number)")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ValueError(
            f"calculator: the result has about {value.bit_length() * math.log10(2):.0f} digits; at most "
            f"{MAX_DIGITS} are allowed"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("calculator: the result is too large for a floating-point number")
    return value


def format_number(value: int | float) -> str:
    """An int with every digit; a float with 12 significant digits, which drops binary noise (0.1+0.2 -> 0.3)."""
    if isinstance(value, int):
        return str(Decimal(value))  # exact, and not subject to Python's 4300-digit limit on int -> str
    text = format(value, ".12g")
    return "0" if text == "-0" else text


__all__ = ["MAX_DIGITS", "MAX_EXPONENT", "MAX_LENGTH", "calculator"]
