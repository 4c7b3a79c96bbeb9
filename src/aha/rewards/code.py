"""Code rewards: run the completion's program against the row's tests in :mod:`aha.sandbox`.

The program is the last fenced code block tagged with the language (``python``, also ``py``/``python3``),
searched after the last ``</think>`` when there is one; no such block scores 0.0. The tests come from a dataset
column (``tests`` by default) in one of these forms:

* **assert-style**: Python source (a string, or a list of strings) such as ``"assert f(1) == 2\\nassert ..."``.
  Each top-level ``assert`` is one test; other statements (imports, helpers) are set-up run first. All the tests
  of a row run in one execution of :mod:`aha.rewards.harness`, fed the job through stdin: the program is
  executed as a module named ``solution`` (so its ``if __name__ == "__main__":`` part does not run), then the
  set-up, then what each test computes. The *judging is done here, in the parent*: an assert ``a == b`` (any
  comparison chain: ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``, and ``is``/``is not`` against
  None/True/False) sends the child only its operands that are not literals, keeps the literal ones (the expected
  values: they never enter the sandbox), gets the child's values back as plain data (built-in types only) and
  compares them here; any other assert (``assert math.isclose(f(x), 1.5)``) is evaluated in the child and its
  plain value must be true. A test passes when its values came back once, decode, and satisfy the comparison.
* **stdin/stdout**: a list of ``{"input": ..., "output": ...}`` (or ``{"inputs": [...], "outputs": [...]}``,
  or ``{"test_cases": [...]}`` as in Open R1's ``verification_info``, or any of these as a JSON string): one
  execution per case; it passes when the program exits 0 and its stdout equals the output, up to trailing
  whitespace on each line and blank lines at the ends.

A row whose tests are None scores None ("does not apply"), and so does every row when the batch has no tests
column at all (with a warning: check ``tests_column``). Executions run in parallel, at most
``aha.sandbox.max_parallel()`` at once. A failure of the sandbox itself raises ``SandboxError`` (the training
stops) instead of scoring the model 0.

What cannot be gamed: there is no marker to print or find (the harness is public and holds no secret), an
object with a custom ``__eq__`` (or any other non-built-in value) cannot come back, and a solution's function
returns plain copies inside the test expressions too. What can, for tests that are not of the literal form: a
program runs in the same process as the harness, so it can forge the result lines; for ``f(x) == <literal>``
that needs the expected value (i.e. solving it), but operands the child computes (``assert f(x) == g(y)``,
``assert math.isclose(f(x), 1.5)``) it could forge, as it could monkeypatch modules the tests use. Keep the
expected values literal (the ``coding`` task's are) when the reward must not be gamed.

The sandbox's mechanism (namespaces as root, else bubblewrap: :func:`aha.sandbox.mechanism`) is printed when the
first code reward is built; with none a code reward is refused (SandboxError saying what to install).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import operator
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aha import sandbox
from aha.console import console
from aha.rewards import harness
from aha.rewards.builtin import texts
from aha.rewards.registry import reward

LANGUAGES = {"python": ("python", "py", "python3")}
FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
HIDDEN = ("trainer_state", "log_extra", "log_metric")
log = logging.getLogger(__name__)
_warned: set[str] = set()
_announced: set[str] = set()


def extract_code(text: str, language: str = "python") -> str | None:
    """The last fenced block tagged `language` (or an alias) after the last ``</think>``; None when there is none."""
    tags = LANGUAGES.get(language.lower(), (language.lower(),))
    tail = text.rsplit("</think>", 1)[-1]
    blocks = [body for tag, body in FENCE_RE.findall(tail) if tag.lower() in tags]
    return blocks[-1] if blocks else None


def normalize_tests(tests: Any) -> tuple[str, Any] | None:
    """("asserts", (setup, [assert sources])) or ("io", [(input, output), ...]); None for a missing value."""
    if tests is None:
        return None
    if isinstance(tests, str):
        s = tests.strip()
        if s[:1] in "[{":
            try:
                return normalize_tests(json.loads(s))
            except json.JSONDecodeError:
                pass
        return "asserts", split_asserts(tests)
    if isinstance(tests, dict):
        if "test_cases" in tests:
            return normalize_tests(tests["test_cases"])
        if "inputs" in tests and "outputs" in tests:
            return "io", [(_text(i), _text(o)) for i, o in zip(tests["inputs"], tests["outputs"], strict=True)]
        if "input" in tests and "output" in tests:
            return normalize_tests([tests])
    if isinstance(tests, Sequence) and not isinstance(tests, (str, bytes)):
        if all(isinstance(t, str) for t in tests):
            return "asserts", split_asserts("\n".join(tests))
        if all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
            return "io", [(_text(t["input"]), _text(t["output"])) for t in tests]
    raise ValueError(
        "code reward: tests must be assert source (str or list of str) or stdin/stdout cases "
        f"([{{'input', 'output'}}, ...]); got {str(tests)[:200]!r}"
    )


def _text(x: Any) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def split_asserts(source: str) -> tuple[str, list[str]]:
    """(set-up source, [one source per top-level assert]) of assert-style tests."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"code reward: the tests are not valid Python ({e}): {source[:200]!r}") from None
    setup = [ast.unparse(n) for n in tree.body if not isinstance(n, ast.Assert)]
    asserts = [ast.unparse(n) for n in tree.body if isinstance(n, ast.Assert)]
    if not asserts:
        raise ValueError(f"code reward: the tests have no assert statement: {source[:200]!r}")
    return "\n".join(setup), asserts


HARNESS = Path(harness.__file__).read_text(encoding="utf-8")  # the program the sandbox runs for assert tests
OPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
NO_VALUE = object()


@dataclass(frozen=True)
class Check:
    """One assert as the parent judges it. Operand k is the literal `literals[k]`, kept here, when `sources[k]` is
    None, else the value of the source `sources[k]`, evaluated in the child; `ops` compare consecutive operands
    (none: the only operand must be true)."""

    sources: tuple[str | None, ...]
    literals: tuple[Any, ...]
    ops: tuple[Any, ...]

    def to_child(self) -> list[str]:
        return [src for src in self.sources if src is not None]


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return NO_VALUE


def _singleton(value: Any) -> bool:
    return value is None or value is True or value is False


def plan_assert(source: str) -> Check:
    """How the assert `source` (one ``assert`` statement) is judged: see the module docstring."""
    stmt = ast.parse(source).body[0]
    assert isinstance(stmt, ast.Assert)
    test = stmt.test
    if isinstance(test, ast.Compare) and all(type(op) in OPS for op in test.ops):
        nodes = [test.left, *test.comparators]
        values = [_literal(n) for n in nodes]
        # identity means something across the boundary only for None, True and False
        if all(
            type(op) not in (ast.Is, ast.IsNot) or _singleton(values[j]) or _singleton(values[j + 1])
            for j, op in enumerate(test.ops)
        ):
            sources = tuple(ast.unparse(n) if v is NO_VALUE else None for n, v in zip(nodes, values))
            literals = tuple(None if v is NO_VALUE else v for v in values)
            return Check(sources, literals, tuple(OPS[type(op)] for op in test.ops))
    return Check((ast.unparse(test),), (None,), ())


def judge(check: Check, record: dict[str, Any] | None) -> bool:
    """Does the child's `record` for `check` (``{"values": [...]}``, or None when it sent none) pass it?"""
    if record is None or type(record.get("values")) is not list or len(record["values"]) != len(check.to_child()):
        return False
    try:
        got = iter([harness.decode(v) for v in record["values"]])
        operands = [next(got) if src is not None else lit for src, lit in zip(check.sources, check.literals)]
        if not check.ops:
            return bool(operands[0])
        return all(bool(op(a, b)) for op, a, b in zip(check.ops, operands, operands[1:]))
    except Exception:  # not plain data, or values that do not compare (1 < "a"): a failed test
        return False


def _norm(out: str) -> str:
    return "\n".join(line.rstrip() for line in out.strip().splitlines())


def _assert_score(code: str, setup: str, tests: tuple[str, ...], timeout: float, memory_mb: int) -> float:
    checks = [plan_assert(src) for src in tests]
    job = {"code": code, "setup": setup, "tests": [c.to_child() for c in checks]}
    # one execution for all the tests of the row; when it times out, the tests answered before still count
    result = sandbox.run(HARNESS, stdin=json.dumps(job), timeout=timeout, memory_mb=memory_mb)
    records: dict[int, dict[str, Any] | None] = {}
    ready = False
    for line in result.stdout.splitlines():
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(msg) is not dict:
            continue
        if msg.get("ready") is True:
            ready = True
        elif type(msg.get("i")) is int and 0 <= msg["i"] < len(checks):
            records[msg["i"]] = None if msg["i"] in records else msg  # a test answered twice was tampered with
    if not ready:  # written before any of the program runs: the harness itself did not start
        raise sandbox.SandboxError(
            f"code reward: the test harness did not start in the sandbox ({result.killed_reason or result.exit_code}; "
            f"stderr: {result.stderr[-1500:]!r})"
        )
    return sum(judge(c, records.get(i)) for i, c in enumerate(checks)) / len(checks)


def _io_pass(code: str, stdin: str, expected: str, timeout: float, memory_mb: int) -> bool:
    result = sandbox.run(code, stdin=stdin, timeout=timeout, memory_mb=memory_mb)
    return result.ok and _norm(result.stdout) == _norm(expected)


@functools.lru_cache(maxsize=2048)
def _score_cached(code: str, tests_json: str, timeout: float, memory_mb: int) -> float:
    kind, spec = json.loads(tests_json)
    if kind == "asserts":
        return _assert_score(code, spec[0], tuple(spec[1]), timeout, memory_mb)
    with ThreadPoolExecutor(max_workers=sandbox.max_parallel()) as pool:
        ok = list(pool.map(lambda case: _io_pass(code, case[0], case[1], timeout, memory_mb), spec))
    return sum(ok) / len(ok) if ok else 0.0


def score(code: str | None, tests: Any, *, timeout: float = 2.0, memory_mb: int = 256) -> float | None:
    """Fraction of `tests` (any form ``normalize_tests`` takes) that `code` passes; None when tests is None,
    0.0 when there is no code. Same code and tests are run once (the result is cached)."""
    norm = normalize_tests(tests)
    if norm is None:
        return None
    if code is None or not code.strip():
        return 0.0
    return _score_cached(code, json.dumps(norm), float(timeout), int(memory_mb))


def _tests_of(name: str, tests_column: str, n: int, kwargs: dict[str, Any]) -> list[Any]:
    if tests_column not in kwargs:  # like a row without tests: "does not apply", but say so (once)
        if name not in _warned:
            _warned.add(name)
            log.warning(
                "reward %r needs the tests in a %r dataset column (parameter tests_column); got columns %s: "
                "every completion scores None",
                name,
                tests_column,
                sorted(k for k in kwargs if k not in HIDDEN),
            )
        return [None] * n
    tests = list(kwargs[tests_column])
    if len(tests) != n:
        raise ValueError(f"reward {name!r}: {len(tests)} rows of {tests_column!r} for {n} completions")
    return tests


def _fractions(
    name: str, completions: Sequence[Any], language: str, tests_column: str, timeout: float, memory_mb: int, kwargs
) -> list[float | None]:
    tests = _tests_of(name, tests_column, len(completions), kwargs)
    codes = [extract_code(t, language) for t in texts(completions)]
    for t in tests:  # a malformed tests column is the dataset's fault: fail before running anything
        normalize_tests(t)
    with ThreadPoolExecutor(max_workers=sandbox.max_parallel()) as pool:
        jobs = [pool.submit(score, c, t, timeout=timeout, memory_mb=memory_mb) for c, t in zip(codes, tests)]
        return [j.result() for j in jobs]


def _check(name: str) -> Any:
    def check(params: dict[str, Any]) -> None:
        """The parameters, then the sandbox: refused with one message when no mechanism can run here."""
        if params["language"].lower() not in LANGUAGES["python"]:
            raise ValueError(
                f"reward {name!r}: parameter 'language' must be python (the sandbox runs Python only), "
                f"got {params['language']!r}"
            )
        if params["timeout"] <= 0:
            raise ValueError(f"reward {name!r}: parameter 'timeout' must be positive, got {params['timeout']!r}")
        if params["memory_mb"] < 32:
            raise ValueError(f"reward {name!r}: parameter 'memory_mb' must be at least 32, got {params['memory_mb']!r}")
        if "threshold" in params and not 0.0 < params["threshold"] <= 1.0:
            raise ValueError(f"reward {name!r}: parameter 'threshold' must be in (0, 1], got {params['threshold']!r}")
        try:
            mech = sandbox.mechanism()
        except sandbox.SandboxError as e:
            raise sandbox.SandboxError(f"reward {name!r} cannot run: {e}") from None
        if mech.description not in _announced:  # at start-up, once: where the completions' programs run
            _announced.add(mech.description)
            console.print(f"sandbox: code rewards run the programs under {mech.description}")

    return check


@reward(
    "code",
    "fraction of the row's tests (asserts or stdin/stdout) the last ```python block passes, run in aha.sandbox "
    "(namespaces as root, else bubblewrap)",
    _check("code"),
)
def code_reward(
    completions,
    *,
    language: str = "python",
    tests_column: str = "tests",
    timeout: float = 2.0,
    memory_mb: int = 256,
    **kwargs,
) -> list[float | None]:
    """r = passed / total tests of the row, run in the sandbox (`timeout` wall seconds per execution: one per
    stdin/stdout case, one for all the asserts of a row); 0.0 without a code block; None without tests."""
    return _fractions("code", completions, language, tests_column, timeout, memory_mb, kwargs)


@reward(
    "binary_code",
    "1.0 iff the last ```python block passes the row's tests (a fraction >= threshold), else 0.0; run in "
    "aha.sandbox (namespaces as root, else bubblewrap)",
    _check("binary_code"),
)
def binary_code_reward(
    completions,
    *,
    language: str = "python",
    tests_column: str = "tests",
    timeout: float = 2.0,
    memory_mb: int = 256,
    threshold: float = 1.0,
    **kwargs,
) -> list[float | None]:
    """r = 1.0 if passed / total >= threshold (default: all pass) else 0.0; None when the row has no tests."""
    fractions = _fractions("binary_code", completions, language, tests_column, timeout, memory_mb, kwargs)
    return [None if f is None else float(f >= threshold - 1e-9) for f in fractions]
