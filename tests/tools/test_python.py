"""The python tool: what a program does is the tool's result (output, traceback, timeout), a failure of the sandbox
is an error result through a Toolbox; the factory's limits reach the sandbox. Tests that run programs skip where
no sandbox mechanism can run here."""

from __future__ import annotations

import inspect
import time

import pytest
from transformers.utils import get_json_schema

from aha import sandbox
from aha.sandbox import Result, SandboxError
from aha.tools import Toolbox, ToolCall, ToolResult, python, python_tool
from aha.tools.python import run_program


@pytest.fixture
def real_sandbox():
    try:
        sandbox.mechanism()
    except SandboxError as e:
        pytest.skip(f"no sandbox here: {e}")


@pytest.fixture
def fake_run(monkeypatch):
    """aha.sandbox.run replaced: it records its keyword arguments and returns the Result the test sets."""
    seen: dict = {}

    def run(code: str, **kwargs) -> Result:
        seen.update(code=code, **kwargs)
        return seen["result"]

    monkeypatch.setattr(sandbox, "run", run)
    return seen


def test_schema_is_the_same_for_every_factory_tool():
    schema = get_json_schema(python)
    assert schema["function"]["name"] == "python"
    assert schema["function"]["description"].startswith("Run a Python program and return what it prints.")
    assert list(schema["function"]["parameters"]["properties"]) == ["code"]
    tool = python_tool(timeout=1.0, memory_mb=64, max_output=100)
    assert get_json_schema(tool) == schema
    assert tool.__name__ == "python" and tool.__doc__ == python.__doc__
    assert inspect.signature(tool) == inspect.signature(python) and not hasattr(tool, "__wrapped__")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"memory_mb": 8}, "memory_mb must be an integer of at least 16"),
        ({"max_output": 0}, "max_output must be a positive integer"),
        ({"max_output": True}, "max_output must be a positive integer"),
    ],
)
def test_factory_refuses_bad_limits(kwargs, match):
    with pytest.raises(ValueError, match=f"python_tool: {match}"):
        python_tool(**kwargs)


def test_limits_reach_the_sandbox(fake_run):
    fake_run["result"] = Result(stdout="5\n", stderr="", exit_code=0)
    assert python_tool(timeout=1.5, memory_mb=64, max_output=100)("print(2+3)") == "5\n"
    assert fake_run == {
        "code": "print(2+3)",
        "timeout": 1.5,
        "cpu_seconds": 3,
        "memory_mb": 64,
        "max_output": 100,
        "result": fake_run["result"],
    }
    python("pass")
    assert (fake_run["timeout"], fake_run["memory_mb"], fake_run["max_output"]) == (5.0, 256, 4000)


@pytest.mark.parametrize(
    "result,text",
    [
        (Result("out\n", "warning\n", 0), "out\n"),  # stderr of a program that succeeded is not shown
        (Result("", "", 0), ""),
        (Result("a\n", "Traceback ...\nZeroDivisionError: division by zero\n", 1), "a\nTraceback ...\nZeroDivisionError: division by zero\n"),
        (Result("", "", 3), "exit status 3\n"),
        (Result("partial", "", None, timed_out=True, killed_reason="timeout"), "partial\ntimed out after 1.5s\n"),
        (Result("x" * 10, "", None, killed_reason="output_limit", truncated=True), "x" * 10 + "\noutput limit reached (100 bytes): the program was stopped\n"),
        (Result("", "", -24, killed_reason="cpu_limit"), "CPU time limit reached (3s): the program was stopped\n"),
        (Result("", "", -9, killed_reason="signal 9"), "the program was killed (signal 9)\n"),
        (Result("", "E" * 3000, 1), "E" * 2000 + "\n"),  # the tail of a long stderr
    ],
)  # fmt: skip
def test_how_a_program_ended_is_described(fake_run, result, text):
    fake_run["result"] = result
    assert run_program("code", 1.5, 64, 100) == text


def test_a_sandbox_failure_is_an_error_result(monkeypatch):
    def broken(code: str, **kwargs) -> Result:
        raise SandboxError("sandbox: cannot run untrusted code here")

    monkeypatch.setattr(sandbox, "run", broken)
    got = Toolbox([python]).call(ToolCall("python", {"code": "print(1)"}))
    assert got == ToolResult("python", "Error: SandboxError: sandbox: cannot run untrusted code here", True)


def test_print_and_exception_in_the_sandbox(real_sandbox):
    box = Toolbox([python_tool(timeout=5.0)])
    assert box.call(ToolCall("python", {"code": "print(2+3)"})) == ToolResult("python", "5\n", False)
    got = box.call(ToolCall("python", {"code": "print('before')\n1/0"}))
    assert not got.error  # the program failed, not the tool: its output shows why
    assert got.content.startswith("before\nTraceback (most recent call last):")
    assert got.content.endswith("ZeroDivisionError: division by zero\n")


def test_an_infinite_loop_times_out_quickly(real_sandbox):
    start = time.monotonic()
    got = Toolbox([python_tool(timeout=1.0)]).call(
        ToolCall("python", {"code": "print('hi', flush=True)\nwhile True: pass"})
    )
    assert time.monotonic() - start < 8
    assert got == ToolResult("python", "hi\ntimed out after 1s\n", False)


def test_secrets_and_network_are_out_of_reach(real_sandbox):
    code = (
        "import socket\n"
        "try:\n    open('/etc/shadow').read(); print('read shadow')\nexcept OSError as e:\n    print('shadow', type(e).__name__)\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('connected')\n"
        "except OSError as e:\n    print('network', type(e).__name__)\n"
    )  # fmt: skip
    out = python_tool(timeout=5.0)(code)
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("shadow ") and lines[1].startswith("network "), out
