"""aha.tools.toolbox: schemas (as transformers makes them), the Toolbox's calls (results, errors as results,
timeouts, async tools, order), and TRL 1.16's environment contract."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from typing import Optional

import pytest
from transformers.utils import get_json_schema

from aha.tools import Toolbox, ToolCall, ToolResult, environment_methods, tool_schema


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def describe(name: str, times: int = 1, loud: bool = False, scale: float = 1.0, note: Optional[str] = None) -> dict:  # noqa: UP045 (the Optional form on purpose)
    """Describe a call.

    Args:
        name: a name
        times: how many times
        loud: shout it
        scale: a factor
        note: an optional note
    """
    return {"name": name * times, "loud": loud, "scale": scale, "note": note}


def nothing() -> None:
    """Return nothing."""


def divide(x: float) -> float:
    """Divide one by x.

    Args:
        x: the divisor
    """
    return 1 / x


def test_tool_schema_is_transformers_get_json_schema():
    assert tool_schema(multiply) == get_json_schema(multiply)
    assert tool_schema(multiply)["function"]["parameters"] == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "the first factor"},
            "b": {"type": "integer", "description": "the second factor"},
        },
        "required": ["a", "b"],
    }
    assert tool_schema(multiply)["type"] == "function"


def no_doc(x: int) -> int:
    return x


def no_hint(x) -> int:
    """Identity.

    Args:
        x: a value
    """
    return x


def undocumented(x: int, y: int) -> int:
    """Add.

    Args:
        x: a value
    """
    return x + y


def star(*values: int) -> int:
    """Sum.

    Args:
        values: the values
    """
    return sum(values)


def only_returns() -> int:
    """Returns:
    the answer
    """
    return 42


@pytest.mark.parametrize(
    "fn,what",
    [
        (no_doc, "no docstring"),
        (no_hint, "missing a type hint"),
        (undocumented, "no description for the argument 'y'"),
        (star, "*args, **kwargs or positional-only"),
        (only_returns, "no description before 'Args:'"),
        (functools.partial(multiply, 2), "no __name__"),
    ],
)
def test_tool_schema_errors_name_the_function_what_is_missing_and_the_fix(fn, what):
    with pytest.raises(ValueError) as e:
        tool_schema(fn)
    message = str(e.value)
    assert what in message
    if not isinstance(fn, functools.partial):
        assert f"{__name__}.{fn.__qualname__}" in message
    if "*args" not in message:
        assert "Args:" in message and "type hint on every argument" in message


def test_toolbox_names_schemas_and_duplicates():
    box = Toolbox([multiply, describe])
    assert box.names == ["multiply", "describe"] and len(box) == 2
    assert "multiply" in box and "divide" not in box
    assert box.tools == [multiply, describe]
    assert box.schemas == [get_json_schema(multiply), get_json_schema(describe)]

    def make():
        def multiply(a: int) -> int:
            """Double.

            Args:
                a: a value
            """
            return 2 * a

        return multiply

    with pytest.raises(ValueError, match="two tools are named 'multiply'") as e:
        Toolbox([multiply, make()])
    assert f"{__name__}.multiply and {__name__}.test_toolbox_names_schemas_and_duplicates.<locals>.make" in str(e.value)
    with pytest.raises(ValueError, match="no docstring"):
        Toolbox([multiply, no_doc])
    for bad in ({"timeout": 0}, {"timeout": True}, {"max_chars": 0}, {"max_chars": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Toolbox([multiply], **bad)
    with pytest.raises(ValueError, match="a list of functions"):
        Toolbox(multiply)  # type: ignore[arg-type]


def test_results_as_text():
    box = Toolbox([multiply, describe, nothing])
    assert box.call(ToolCall("multiply", {"a": 123, "b": 456})) == ToolResult("multiply", "56088", False)
    got = box.call(ToolCall("describe", {"name": "ab", "times": 2}))
    assert got.content == '{"name": "abab", "loud": false, "scale": 1.0, "note": null}' and not got.error
    assert box.call(ToolCall("nothing", {})) == ToolResult("nothing", "", False)

    def stamp(day: str) -> object:
        """A date-like object, not JSON.

        Args:
            day: the day
        """
        return {"day": day, "when": threading.Lock}

    assert Toolbox([stamp]).call(ToolCall("stamp", {"day": "x"})).content == (
        '{"day": "x", "when": "' + str(threading.Lock) + '"}'
    )


@pytest.mark.parametrize(
    "call,message",
    [
        (ToolCall("nope", {}), "Error: unknown tool 'nope'; the available tools are: multiply, describe, divide"),
        (ToolCall(["x"], {}), "Error: unknown tool ['x']"),  # type: ignore[arg-type]
        (ToolCall("multiply", {"a": 1}), "Error: tool 'multiply' is missing the required argument 'b'"),
        (ToolCall("multiply", {"a": 1, "b": 2, "c": 3}), "Error: tool 'multiply' has no argument 'c' (its arguments: a, b)"),
        (ToolCall("multiply", [1, 2]), "Error: the arguments of 'multiply' must be a JSON object, got list"),  # type: ignore[arg-type]
        (ToolCall("multiply", {"a": True, "b": 2}), "Error: argument 'a' of tool 'multiply' must be an integer, got true"),
        (ToolCall("multiply", {"a": "3", "b": 2}), "Error: argument 'a' of tool 'multiply' must be an integer, got \"3\""),
        (ToolCall("multiply", {"a": 1.5, "b": 2}), "must be an integer, got 1.5"),
        (ToolCall("describe", {"name": 3}), "Error: argument 'name' of tool 'describe' must be a string, got 3"),
        (ToolCall("describe", {"name": "a", "loud": 1}), "argument 'loud' of tool 'describe' must be a boolean (true or false), got 1"),
        (ToolCall("describe", {"name": "a", "scale": "2"}), "argument 'scale' of tool 'describe' must be a number, got \"2\""),
        (ToolCall("describe", {"name": "a", "note": 5}), "argument 'note' of tool 'describe' must be a string or null, got 5"),
        (ToolCall("divide", {"x": 0}), "Error: ZeroDivisionError: division by zero"),
    ],
)  # fmt: skip
def test_bad_calls_are_error_results(call, message):
    got = Toolbox([multiply, describe, divide]).call(call)
    assert got.error and message in got.content, got


def test_json_types_that_fit():
    box = Toolbox([describe, divide])
    got = box.call(ToolCall("describe", {"name": "a", "scale": 2, "note": None, "loud": True}))
    assert not got.error and '"scale": 2' in got.content  # an integer is a number; null fits Optional
    assert box.call(ToolCall("divide", {"x": 4})) == ToolResult("divide", "0.25", False)


def test_a_tool_that_exits_is_an_error_not_the_end():
    def leave(code: int) -> str:
        """Exit.

        Args:
            code: the status
        """
        raise SystemExit(code)

    assert Toolbox([leave]).call(ToolCall("leave", {"code": 3})) == ToolResult("leave", "Error: SystemExit: 3", True)


def test_truncation_is_visible():
    def shout(n: int) -> str:
        """Many x.

        Args:
            n: how many
        """
        return "x" * n

    box = Toolbox([shout], max_chars=10)
    assert box.call(ToolCall("shout", {"n": 10})).content == "x" * 10
    assert box.call(ToolCall("shout", {"n": 50})).content == "x" * 10 + "…[truncated 40 chars]"
    assert box.call(ToolCall("nope", {})).content.endswith("chars]")  # error messages are capped too


def test_sync_timeout_stops_waiting():
    release = threading.Event()

    def hang(seconds: float) -> str:
        """Wait.

        Args:
            seconds: how long
        """
        release.wait(seconds)
        return "done"

    box = Toolbox([hang], timeout=0.2)
    start = time.monotonic()
    got = box.call(ToolCall("hang", {"seconds": 30}))
    assert time.monotonic() - start < 2
    assert got == ToolResult("hang", "Error: tool 'hang' timed out after 0.2s", True)
    release.set()  # the abandoned thread returns on its own
    assert box.call(ToolCall("hang", {"seconds": 0})) == ToolResult("hang", "done", False)


async def slow_square(x: int, delay: float = 0.3) -> int:
    """Square, slowly.

    Args:
        x: a value
        delay: seconds to wait
    """
    await asyncio.sleep(delay)
    return x * x


def test_async_tools_run_concurrently_and_in_order():
    box = Toolbox([slow_square, multiply])
    calls = [
        ToolCall("slow_square", {"x": 2}),
        ToolCall("multiply", {"a": 2, "b": 3}),
        ToolCall("nope", {}),
        ToolCall("slow_square", {"x": 3}),
        ToolCall("slow_square", {"x": 4}),
    ]
    start = time.monotonic()
    got = box.call_many(calls)
    assert time.monotonic() - start < 0.8  # three 0.3 s sleeps at once, not one after another
    assert [r.content for r in got] == ["4", "6", got[2].content, "9", "16"]
    assert [r.error for r in got] == [False, False, True, False, False]
    assert [r.name for r in got] == [c.name for c in calls]
    assert box.call_many([]) == []


def test_async_timeout_cancels_and_own_timeout_error_is_not_a_timeout():
    cancelled = []

    async def stall(seconds: float) -> str:
        """Stall.

        Args:
            seconds: how long
        """
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "done"

    async def flaky(x: int) -> str:
        """Raise TimeoutError itself.

        Args:
            x: ignored
        """
        raise TimeoutError("upstream took too long")

    box = Toolbox([stall, flaky], timeout=0.2)
    start = time.monotonic()
    assert box.call(ToolCall("stall", {"seconds": 30})) == ToolResult(
        "stall", "Error: tool 'stall' timed out after 0.2s", True
    )
    assert time.monotonic() - start < 2 and cancelled == [True]
    assert box.call(ToolCall("flaky", {"x": 1})) == ToolResult(
        "flaky", "Error: TimeoutError: upstream took too long", True
    )


def test_call_inside_a_running_event_loop():
    box = Toolbox([slow_square])

    async def main() -> ToolResult:
        return box.call(ToolCall("slow_square", {"x": 5, "delay": 0.0}))

    assert asyncio.run(main()) == ToolResult("slow_square", "25", False)


class Counter:
    """An environment: a counter the model moves."""

    def __init__(self) -> None:
        self.value = 0
        self.rewarded = False

    def reset(self, **row) -> str:
        self.value = row.get("start", 0)
        return f"the counter is at {self.value}"

    def get_reward(self) -> float:
        self.rewarded = True
        return float(self.value)

    def add(self, amount: int) -> int:
        """Add to the counter.

        Args:
            amount: how much to add
        """
        self.value += amount
        return self.value

    def peek(self) -> int:
        """The counter's value."""
        return self.value

    def _helper(self) -> None:
        raise AssertionError("private methods are not tools")

    @property
    def broken(self) -> int:  # listed on the class, so never evaluated
        raise AssertionError("properties are not evaluated")


def test_from_environment_binds_the_public_methods():
    assert environment_methods(Counter) == ["add", "peek"]
    env, other = Counter(), Counter()
    env.reset(start=5)
    box = Toolbox.from_environment(env, tools=[multiply], timeout=3.0, max_chars=100)
    assert box.names == ["multiply", "add", "peek"]  # the standalone tools first, as TRL 1.16 does
    assert box.timeout == 3.0 and box.max_chars == 100
    assert box.call(ToolCall("add", {"amount": 2})) == ToolResult("add", "7", False)
    assert box.call(ToolCall("peek", {})).content == "7"
    assert env.value == 7 and other.value == 0 and not env.rewarded  # this instance only; get_reward not a tool
    assert "self" not in box.schemas[1]["function"]["parameters"]["properties"]


def test_environment_errors():
    class NoReset:
        def step(self, action: str) -> str:
            """Act.

            Args:
                action: what to do
            """
            return action

    with pytest.raises(
        ValueError,
        match=r"NoReset has no reset method: environment_factory must return an object with a reset\(\*\*row\) method",
    ):
        Toolbox.from_environment(NoReset())
    with pytest.raises(ValueError, match="got the class Counter, not an instance"):
        Toolbox.from_environment(Counter)

    class Undocumented(Counter):
        def jump(self, to: int) -> None:
            self.value = to

    with pytest.raises(ValueError, match=r"test_environment_errors.<locals>.Undocumented.jump cannot be described"):
        Toolbox.from_environment(Undocumented())


def test_async_tool_that_exits_and_an_exception_without_a_message():
    async def leave(code: int) -> str:
        """Exit.

        Args:
            code: the status
        """
        raise SystemExit(code)

    class Odd(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    def odd(x: int) -> str:
        """Raise an exception that cannot be printed.

        Args:
            x: ignored
        """
        raise Odd()

    box = Toolbox([leave, odd])
    assert box.call(ToolCall("leave", {"code": 2})) == ToolResult("leave", "Error: SystemExit: 2", True)
    got = box.call(ToolCall("odd", {"x": 1}))
    assert got.error and got.content.startswith("Error: Odd: <") and "Odd object at" in got.content


def test_toolbox_tools_render_in_a_chat_template_as_its_schemas():
    """``apply_chat_template(tools=toolbox.tools)`` describes the tools (bound methods and the python tool's
    factory copy too) exactly as ``toolbox.schemas``."""
    from aha.models.tiny import build_tokenizer
    from aha.tools import calculator, python_tool

    box = Toolbox.from_environment(Counter(), tools=[calculator, python_tool(timeout=1.0)])
    text = build_tokenizer().apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=box.tools, chat_template="{{ tools | tojson }}", tokenize=False
    )
    assert json.loads(text) == box.schemas
    assert [s["function"]["name"] for s in box.schemas] == ["calculator", "python", "add", "peek"]
