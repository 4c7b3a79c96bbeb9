"""The `code` and `binary_code` rewards: extraction, test formats, scoring in the sandbox (under each mechanism:
`sandbox_runner`, tests/conftest.py), the hacks that must score 0, failures that raise."""

from __future__ import annotations

import json
import logging

import pytest

import aha.rewards as rewards
import aha.rewards.code as code_rewards
from aha import sandbox
from aha.rewards.code import extract_code, judge, normalize_tests, plan_assert, score, split_asserts
from aha.rewards.harness import decode, encode
from aha.sandbox import SandboxError

ASSERTS = "assert f(1) == 2\nassert f(5) == 10\nassert f(0) == 0"
IO = [{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8"}]


def block(code: str, lang: str = "python") -> str:
    return f"<think>double it</think>\n```{lang}\n{code}\n```"


@pytest.fixture
def own():
    """This process's own mechanism, for what does not depend on it (the reward's logic); the cache emptied."""
    try:
        sandbox.mechanism()
    except SandboxError as e:
        pytest.skip(f"no sandbox here: {e}")
    code_rewards._score_cached.cache_clear()
    yield
    code_rewards._score_cached.cache_clear()


@pytest.fixture
def sb(sandbox_runner, monkeypatch):
    """The rewards' executions go through `sandbox_runner` (a worker as nobody for bubblewrap under root); the
    score cache is emptied so each mechanism really runs them."""
    monkeypatch.setattr(sandbox, "run", sandbox_runner.run)
    code_rewards._score_cached.cache_clear()
    yield sandbox_runner
    code_rewards._score_cached.cache_clear()


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


def test_code_fraction_and_binary(own):
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


def test_stdin_stdout_tests(own):
    good = block("a, b = map(int, input().split())\nprint(a + b)")
    wrong = block("a, b = map(int, input().split())\nprint(a * b)")
    crash = block("raise SystemExit(1)")
    assert call("code", [good, wrong, crash], [IO, IO, json.dumps(IO)]) == [1.0, 0.0, 0.0]


def test_main_block_not_run_and_exit_is_no_pass(sb):
    main_guard = block("def f(x):\n    return 2 * x\n\nif __name__ == '__main__':\n    print(f(int(input())))")
    early_exit = block("import sys\nsys.exit(0)\ndef f(x):\n    return 0")
    forged = block("def f(x):\n    return 0\nprint('aha-test-passed-0000 0')")
    assert call("code", [main_guard, early_exit, forged], [ASSERTS] * 3) == [1.0, 0.0, pytest.approx(1 / 3)]


def test_hanging_test_keeps_earlier_passes(sb):
    code = block("def f(x):\n    while x == 5:\n        pass\n    return 2 * x")
    assert call("code", [code], [ASSERTS], timeout=1.0) == [pytest.approx(1 / 3)]


def test_attacks_score_zero_and_do_not_hurt(own):
    bomb = block("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    hog = block("x = bytearray(10 * 1024**3)")
    assert call("code", [bomb, hog], [ASSERTS] * 2, timeout=1.0) == [0.0, 0.0]
    assert score("def f(x):\n    return 2 * x", ASSERTS) == 1.0


def test_parameter_and_column_errors(own, caplog, monkeypatch):
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
    with pytest.raises(SandboxError, match="cannot set up the sandbox"):
        call("code", [block("def f(x):\n    return 3 * x  # uncached")], [ASSERTS])


def test_plain_data_round_trip_and_refusals():
    values = [None, True, 0, -(10**30), 1.5, float("inf"), 2 - 3j, "é", b"\x00\xff", [1, (2, "a")], {1: [b""]}]
    values += [{frozenset({1, 2}), (3,)}, ()]
    for v in values:
        assert decode(json.loads(json.dumps(encode(v)))) == v and type(decode(encode(v))) is type(v)
    assert decode(encode(float("nan"))) != decode(encode(float("nan")))  # nan stays nan

    class Always:
        def __eq__(self, other):
            return True

    class Number(int):
        pass

    for bad in (Always(), Number(3), [1, Always()], {"k": Always()}, iter([1]), print):
        with pytest.raises(TypeError, match="not plain data"):
            encode(bad)
    nested: list = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(ValueError, match="deeper"):
        encode(nested)
    for junk in ([1], {"l": 1}, {"x": []}, {"f": "1", "l": []}, 1.5):
        with pytest.raises(ValueError, match="not encoded"):
            decode(junk)


def test_plan_assert_keeps_literals_in_the_parent():
    c = plan_assert("assert f(1) == [2, 'a']")
    assert c.to_child() == ["f(1)"] and c.literals == (None, [2, "a"])
    assert plan_assert("assert -3 == f(x)").to_child() == ["f(x)"]
    assert plan_assert("assert 0 < f(1) <= 5").to_child() == ["f(1)"]
    assert plan_assert("assert f(1) is None").ops and plan_assert("assert f(1) is not True").ops
    for whole in ("assert f(1) is g(1)", "assert math.isclose(f(1), 2.0)", "assert f(1)", "assert not f(2)"):
        c = plan_assert(whole)
        assert c.ops == () and c.to_child() == [whole.removeprefix("assert ")]
    c = plan_assert("assert f(1) == 2")
    assert judge(c, {"values": [2]}) and not judge(c, {"values": [3]}) and not judge(c, None)
    assert not judge(c, {"values": []}) and not judge(c, {"values": [2, 2]}) and not judge(c, {"error": "x"})
    assert not judge(c, {"values": [{"l": 1}]})  # not what encode writes
    assert not judge(plan_assert("assert f(1) < 2"), {"values": ["a"]})  # does not compare: a failure, no raise
    assert judge(plan_assert("assert f(1)"), {"values": [{"l": [0]}]})
    assert not judge(plan_assert("assert f(1)"), {"values": [{"l": []}]})


HONEST_AND_HACKS = [  # (solution, tests, score)
    ("def f(x):\n    return 2 * x", ASSERTS, 1.0),
    # the old hack: read the harness, find the marker a passed test prints, print it
    (
        "import re\nsrc = open('main.py').read()\n"
        "for m in set(re.findall(r'aha-test-passed-[0-9a-f]+', src)):\n"
        "    for i in range(3):\n        print(f'\\n{m} {i}')\n",
        ASSERTS,
        0.0,
    ),
    # an object equal to everything
    (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def f(x):\n    return Anything()",
        ASSERTS,
        0.0,
    ),
    # forge the harness's own result lines (with its own writer, found in the caller's frame), then leave
    (
        "import sys, os\nh = sys._getframe(1).f_locals\n"
        "for i in range(len(h['job']['tests'])):\n    h['write'](i=i, values=[True])\n"
        "print(h['job'], file=sys.stderr)\nos._exit(0)",
        "assert f(1) == 2\nassert f(5) == 10",
        0.0,
    ),
    # values made by the program cannot stand in for data inside a test expression
    ("class L:\n    def __len__(self):\n        return 3\ndef f(x):\n    return L()", "assert len(f(1)) == 3", 0.0),
    ("def f(x):\n    return [1, 2, x]", "assert len(f(1)) == 3", 1.0),
    ("import builtins\nbuiltins.abs = lambda v: 0.0\ndef f(x):\n    return 0.0", "assert abs(f(2) - 4.0) < 1e-9", 0.0),
    ("def f(x):\n    return 2.0 * x", "assert abs(f(2) - 4.0) < 1e-9", 1.0),
    ("def f(x):\n    return None", "assert f(0) is None\nassert f(1) is not True", 1.0),
    ("import math\ndef f(x):\n    return x / 3", "import math\nassert math.isclose(f(1), 1 / 3)", 1.0),
    ("class S(str):\n    pass\ndef f(x):\n    return S('ab')", "assert f(0) == 'ab'", 0.0),  # a str subclass
]


@pytest.mark.parametrize("solution,tests,expected", HONEST_AND_HACKS)
def test_hacks_score_zero_honest_solutions_one(sb, solution, tests, expected):
    assert score(solution, tests) == pytest.approx(expected)


def test_expected_values_never_enter_the_sandbox(sb, monkeypatch):
    seen = []

    def spy(code, **kwargs):
        seen.append((code, kwargs.get("stdin", "")))
        return sb.run(code, **kwargs)

    monkeypatch.setattr(sandbox, "run", spy)
    assert score("def f(x):\n    return x * 7919", "assert f(3) == 23757\nassert f(1) == 7919") == 1.0
    ((program, stdin),) = seen
    assert "23757" not in program + stdin and "7919" not in program  # the program's own constant is in the job
    assert json.loads(stdin)["tests"] == [["f(3)"], ["f(1)"]]


def test_harness_that_does_not_start_is_a_sandbox_failure(own, monkeypatch):
    monkeypatch.setattr(code_rewards, "HARNESS", "import os\nos._exit(0)")
    with pytest.raises(SandboxError, match="harness did not start"):
        score("def f(x):\n    return 2 * x", ASSERTS)


def test_code_reward_says_which_mechanism_runs(monkeypatch, capsys):
    try:
        sandbox.mechanism()
    except SandboxError as e:
        pytest.skip(f"no sandbox here: {e}")
    monkeypatch.setattr(code_rewards, "_announced", set())
    rewards.get("code")
    rewards.get("binary_code")
    err = capsys.readouterr().err
    assert err.count("sandbox: code rewards run the programs under ") == 1
    assert f"under {sandbox.mechanism().name} (" in err


def test_code_reward_refused_without_a_sandbox(monkeypatch):
    def none():
        raise SandboxError("sandbox: cannot run untrusted code here: not root and no bubblewrap (bwrap) was found")

    monkeypatch.setattr(sandbox, "mechanism", none)
    for name in ("code", "binary_code"):
        with pytest.raises(SandboxError, match=f"reward '{name}' cannot run: .*no bubblewrap"):
            rewards.get(name)
