"""Code rewards: run the completion's program against the row's tests in :mod:`aha.sandbox`.

The program is the last fenced code block tagged with the language (``python``, also ``py``/``python3``),
searched after the last ``</think>`` when there is one; no such block scores 0.0. The tests come from a dataset
column (``tests`` by default) in one of these forms:

* **assert-style**: Python source (a string, or a list of strings) such as ``"assert f(1) == 2\\nassert ..."``.
  Each top-level ``assert`` is one test; other statements (imports, helpers) are set-up run first. The program is
  executed as a module named ``solution`` (so its ``if __name__ == "__main__":`` part does not run), then each
  test in the same namespace, all in one execution; a test passes when it raises nothing.
* **stdin/stdout**: a list of ``{"input": ..., "output": ...}`` (or ``{"inputs": [...], "outputs": [...]}``,
  or ``{"test_cases": [...]}`` as in Open R1's ``verification_info``, or any of these as a JSON string): one
  execution per case; it passes when the program exits 0 and its stdout equals the output, up to trailing
  whitespace on each line and blank lines at the ends.

A row whose tests are None scores None ("does not apply"), and so does every row when the batch has no tests
column at all (with a warning: check ``tests_column``). Executions run in parallel, at most
``aha.sandbox.max_parallel()`` at once. A failure of the sandbox itself raises ``SandboxError`` (the training
stops) instead of scoring the model 0.

Known limits: a program that reads its own source can find the marker a passed assert prints, and one whose
function returns an object equal to everything passes ``==`` asserts; the toy tasks here are not worth such
attacks for a small model, but do not use these rewards as a security boundary for what counts as "correct".
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aha import sandbox
from aha.rewards.builtin import texts
from aha.rewards.registry import reward

LANGUAGES = {"python": ("python", "py", "python3")}
FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
HIDDEN = ("trainer_state", "log_extra", "log_metric")
log = logging.getLogger(__name__)
_warned: set[str] = set()


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


HARNESS = """\
import os as _os
_g = {{"__name__": "solution", "__builtins__": __builtins__}}
try:
    exec(compile({code!r}, "solution.py", "exec"), _g)
    exec(compile({setup!r}, "<test setup>", "exec"), _g)
except BaseException as _e:
    import traceback as _tb
    _tb.print_exc()
else:
    for _i, _src in enumerate({tests!r}):
        try:
            exec(compile(_src, "<test %d>" % _i, "exec"), _g)
        except BaseException:
            continue
        _os.write(1, ("\\n%s %d\\n" % ({nonce!r}, _i)).encode())
"""


def _norm(out: str) -> str:
    return "\n".join(line.rstrip() for line in out.strip().splitlines())


def _assert_score(code: str, setup: str, tests: tuple[str, ...], timeout: float, memory_mb: int) -> float:
    nonce = "aha-test-passed-" + secrets.token_hex(16)
    program = HARNESS.format(code=code, setup=setup, tests=list(tests), nonce=nonce)
    # one execution for all the tests of the row; when it times out, the passes printed before still count
    result = sandbox.run(program, timeout=timeout, memory_mb=memory_mb)
    passed = {int(m) for m in re.findall(re.escape(nonce) + r" (\d+)$", result.stdout, re.MULTILINE)}
    return len(passed & set(range(len(tests)))) / len(tests)


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

    return check


@reward("code", "fraction of the row's tests (asserts or stdin/stdout) the last ```python block passes", _check("code"))
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
    "1.0 iff the last ```python block passes the row's tests (a fraction >= threshold), else 0.0",
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
