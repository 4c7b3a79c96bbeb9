"""The `code` and `binary_code` rewards: extraction, test formats, scoring in the sandbox, failures that raise."""

from __future__ import annotations

import json
import logging
import os

import pytest

import aha.rewards as rewards
import aha.rewards.code as code_rewards
from aha import sandbox
from aha.rewards.code import extract_code, normalize_tests, score, split_asserts
from aha.sandbox import SandboxError

ASSERTS = "assert f(1) == 2\nassert f(5) == 10\nassert f(0) == 0"
IO = [{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8"}]


def block(code: str, lang: str = "python") -> str:
    return f"<think>double it</think>\n```{lang}\n{code}\n```"


@pytest.fixture(scope="module", autouse=True)
def needs_sandbox():
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root")
    try:
        sandbox.run("pass")
    except SandboxError as e:
        pytest.skip(f"no sandbox here: {e}")


def test_extract_code():
    assert extract_code(block("x = 1")) == "x = 1\n"
    two = "```python\na = 1\n```\ntext\n```py\nb = 2\n```\n```js\nc = 3\n```"
    assert extract_code(two) == "b = 2\n"  # last python block (aliases count), other languages do not
    assert extract_code("```\nuntagged\n```") is None
    assert extract_code("no code at all") is None
    assert extract_code("<think>```python\nthought = 1\n```</think> answer without code") is None
    assert extract_code("```Python3 title\nx\n```") == "x\n"


def test_normalize_tests_forms():
    assert normalize_tests(None) is None
    kind, (setup, asserts) = normalize_tests("import math\nassert f(1) == 2\nassert f(2) == 4")
    assert kind == "asserts" and setup == "import math" and len(asserts) == 2
    assert normalize_tests(["assert f(1) == 2", "assert f(2) == 4"])[0] == "asserts"
    io = [("3 4\n", "7\n"), ("10 -2\n", "8")]
    assert normalize_tests(IO) == ("io", io)
    assert normalize_tests(json.dumps(IO)) == ("io", io)
    assert normalize_tests({"inputs": ["3 4\n", "10 -2\n"], "outputs": ["7\n", "8"]}) == ("io", io)
    assert normalize_tests({"test_cases": [{"type": "stdin_stdout", "input": "1", "output": "1"}]}) == (
        "io",
        [("1", "1")],
    )
    with pytest.raises(ValueError, match="not valid Python"):
        split_asserts("assert (")
    with pytest.raises(ValueError, match="no assert"):
        split_asserts("x = 1")
    with pytest.raises(ValueError, match="tests must be"):
        normalize_tests(42)


def call(name: str, completions: list[str], tests: list, **params) -> list:
    fn = rewards.get(name, **params)
    return fn(prompts=[[{"role": "user", "content": "q"}]] * len(completions), completions=completions, tests=tests)


def test_code_fraction_and_binary():
    completions = [
        block("def f(x):\n    return 2 * x"),  # all pass
        block("def f(x):\n    return x + 1"),  # only f(1) == 2
        "I would write f but I will not.",  # no code block
        [{"role": "assistant", "content": block("def f(x):\n    return x * 2")}],  # conversational
    ]
    tests = [ASSERTS] * 4
    assert call("code", completions, tests) == pytest.approx([1.0, 1 / 3, 0.0, 1.0])
    assert call("binary_code", completions, tests) == [1.0, 0.0, 0.0, 1.0]
    assert call("binary_code", completions, tests, threshold=0.3) == [1.0, 1.0, 0.0, 1.0]
    assert call("code", completions[:1], [None]) == [None]


def test_stdin_stdout_tests():
    good = block("a, b = map(int, input().split())\nprint(a + b)")
    wrong = block("a, b = map(int, input().split())\nprint(a * b)")
    crash = block("raise SystemExit(1)")
    assert call("code", [good, wrong, crash], [IO, IO, json.dumps(IO)]) == [1.0, 0.0, 0.0]


def test_main_block_not_run_and_exit_is_no_pass():
    main_guard = block("def f(x):\n    return 2 * x\n\nif __name__ == '__main__':\n    print(f(int(input())))")
    early_exit = block("import sys\nsys.exit(0)\ndef f(x):\n    return 0")
    forged = block("def f(x):\n    return 0\nprint('aha-test-passed-0000 0')")
    assert call("code", [main_guard, early_exit, forged], [ASSERTS] * 3) == [1.0, 0.0, pytest.approx(1 / 3)]


def test_hanging_test_keeps_earlier_passes():
    code = block("def f(x):\n    while x == 5:\n        pass\n    return 2 * x")
    assert call("code", [code], [ASSERTS], timeout=1.0) == [pytest.approx(1 / 3)]


def test_attacks_score_zero_and_do_not_hurt():
    bomb = block("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    hog = block("x = bytearray(10 * 1024**3)")
    assert call("code", [bomb, hog], [ASSERTS] * 2, timeout=1.0) == [0.0, 0.0]
    assert score("def f(x):\n    return 2 * x", ASSERTS) == 1.0


def test_parameter_and_column_errors(caplog, monkeypatch):
    monkeypatch.setattr(code_rewards, "_warned", set())  # warned once per process: maybe already
    with pytest.raises(ValueError, match="language"):
        rewards.get("code", language="rust")
    with pytest.raises(ValueError, match="threshold"):
        rewards.get("binary_code", threshold=0.0)
    with pytest.raises(ValueError, match="timeout"):
        rewards.get("code", timeout=0.0)
    fn = rewards.get("code")
    with caplog.at_level(logging.WARNING, logger="aha.rewards.code"):
        assert fn(prompts=["q"], completions=[block("x = 1")], answer=["1"]) == [None]
    assert "'tests' dataset column" in caplog.text
    with pytest.raises(ValueError, match="not valid Python"):
        fn(prompts=["q"], completions=[block("x = 1")], tests=["assert ("])
    assert call("code", [block("def f(x): return 2*x")], ["assert f(2) == 4"], tests_column="tests") == [1.0]


def test_sandbox_failure_is_an_error_not_a_zero(monkeypatch):
    def broken(*args, **kwargs):
        raise SandboxError("sandbox: cannot set up the sandbox")

    monkeypatch.setattr(sandbox, "run", broken)
    with pytest.raises(SandboxError):
        call("code", [block("def f(x):\n    return 3 * x  # uncached")], [ASSERTS])
