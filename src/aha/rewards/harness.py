"""The harness of assert-style code rewards: the program :mod:`aha.rewards.code` runs in the sandbox (this very
file, as ``main.py``; stdlib only, it runs under ``python -I -S``) and the plain-data format both sides share.

In the sandbox it reads one JSON job from stdin, ``{"code": ..., "setup": ..., "tests": [[source, ...], ...]}``,
then points fd 0 at /dev/null (the job cannot be read twice) and fd 1 at stderr (whatever the program prints is
kept apart from the results, which go to a copy of the first stdout). It writes ``{"ready": true}`` (before any
of the program runs: without it the harness itself failed, a sandbox failure), executes the program as module
``solution``, the test set-up, then evaluates each test's sources and writes one line per test,
``{"i": index, "values": [encode(value), ...]}`` or ``{"i": index, "error": "..."}``.

What the child holds is not worth stealing: this file is public and has no secret (no marker, no nonce), the job
holds what the tests *compute*, never the literal expected values, which stay in the parent; the parent compares
(``aha.rewards.code.judge``). ``encode`` accepts only exact built-in types (None, bool, int, float, complex, str,
bytes, and list, tuple, dict, set, frozenset of them), so an object whose ``__eq__`` says yes to everything
cannot even cross. The tests evaluate in a namespace of their own, with the built-ins as they were before the
program ran, where each function the program defined returns a plain copy of its result (``encode`` then
``decode``): a value the program made cannot stand in for data inside a test expression either
(``len(f(x)) == 3``, ``abs(f(x) - 1.5) < 1e-9``).
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 100
CONTAINERS = {list: "l", tuple: "t", set: "s", frozenset: "fs"}
MAKERS: dict[str, Any] = {"l": list, "t": tuple, "s": set, "fs": frozenset}


def encode(value: Any, depth: int = 0) -> Any:
    """`value` as JSON data if it is made of exact built-in types only (TypeError otherwise; subclasses too):
    None, bool, int and str as themselves, the others tagged (``{"f": repr}``, ``{"l": [...]}``, ...)."""
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return {"f": repr(value)}  # repr: exact, and inf/nan survive JSON
    if t is complex:
        return {"c": [repr(value.real), repr(value.imag)]}
    if t is bytes:
        return {"b": value.hex()}
    if depth >= MAX_DEPTH:
        raise ValueError(f"plain data nested deeper than {MAX_DEPTH}")
    if t in CONTAINERS:
        return {CONTAINERS[t]: [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"a {t.__module__}.{t.__qualname__} is not plain data (built-in types only)")


def decode(data: Any) -> Any:
    """The value `encode` gave `data` for; ValueError (or TypeError: an unhashable set member) when `data` is not
    what `encode` writes."""
    if data is None or type(data) in (bool, int, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError(f"not encoded plain data: {str(data)[:100]!r}")
    ((tag, body),) = data.items()
    if tag == "f" and type(body) is str:
        return float(body)
    if tag == "c" and type(body) is list and len(body) == 2:
        return complex(float(body[0]), float(body[1]))
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag in MAKERS and type(body) is list:
        return MAKERS[tag](decode(v) for v in body)
    if tag == "d" and type(body) is list and all(type(kv) is list and len(kv) == 2 for kv in body):
        return {decode(k): decode(v) for k, v in body}
    raise ValueError(f"not encoded plain data: {str(data)[:100]!r}")


def plain_returns(fn: Any) -> Any:
    """`fn` whose every result is replaced by a plain copy (TypeError when it is not plain data)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return decode(encode(fn(*args, **kwargs)))

    call.__name__ = getattr(fn, "__name__", "call")
    return call


def main() -> None:
    import builtins
    import json
    import os
    import sys
    import traceback
    import types

    job = json.loads(sys.stdin.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out = os.dup(1)
    os.dup2(2, 1)
    pristine = dict(builtins.__dict__)

    def write(**msg: Any) -> None:
        os.write(out, (json.dumps(msg) + "\n").encode())

    write(ready=True)
    solution: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(job["code"], "solution.py", "exec"), solution)
        tests = {
            k: plain_returns(v) if isinstance(v, types.FunctionType) and v.__globals__ is solution else v
            for k, v in solution.items()
            if not k.startswith("__")
        }
        tests.update(__name__="tests", __builtins__=pristine)
        exec(compile(job["setup"], "<test setup>", "exec"), tests)
    except BaseException:
        traceback.print_exc()
        return
    for i, sources in enumerate(job["tests"]):
        try:
            values = [encode(eval(compile(src, f"<test {i}>", "eval"), tests)) for src in sources]
        except BaseException as e:
            write(i=i, error=f"{type(e).__name__}: {e}"[:300])
        else:
            write(i=i, values=values)


if __name__ == "__main__":
    main()
