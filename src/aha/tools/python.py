"""The ``python`` tool: run a program in aha's sandbox (:func:`aha.sandbox.run`) and return what it printed.

What the *program* does is the tool's result, never a tool failure: a program that raises returns its output and
the traceback's tail, one that runs too long returns "timed out after Ns", one that prints too much "output
limit reached". Only a failure of the sandbox itself (:class:`aha.sandbox.SandboxError`: no mechanism can run
code here, setup timed out) raises, and :class:`aha.tools.Toolbox` turns that into an error result.

``python`` runs with the default limits; :func:`python_tool` makes the same tool (same name, docstring and
signature, so the same schema) with others.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from aha import sandbox

STDERR_TAIL = 2000  # characters of stderr shown when the program failed
DEFAULT_TIMEOUT, DEFAULT_MEMORY_MB, DEFAULT_MAX_OUTPUT = 5.0, 256, 4000


def cpu_limit(timeout: float) -> int:
    """The CPU seconds a program may use: one more than its wall-clock `timeout`, so that a busy single-threaded
    program is stopped by the timeout (the clearer message), and one spinning several threads by RLIMIT_CPU."""
    return math.ceil(timeout) + 1


def run_program(code: str, timeout: float, memory_mb: int, max_output: int) -> str:
    """Run `code` in the sandbox with these limits and describe how it went, as the model reads it: its stdout,
    then, when it failed, the tail of its stderr and a line saying why it stopped."""
    if not isinstance(code, str):
        raise ValueError(f"python: code must be a string, got {type(code).__name__}")
    result = sandbox.run(
        code,
        timeout=timeout,
        cpu_seconds=cpu_limit(timeout),
        memory_mb=memory_mb,
        max_output=max_output,
    )
    if result.ok:
        return result.stdout
    parts = [result.stdout] if result.stdout else []
    if result.stderr:
        parts.append(result.stderr[-STDERR_TAIL:])
    if result.killed_reason == "timeout":
        parts.append(f"timed out after {timeout:g}s")
    elif result.killed_reason == "output_limit":
        parts.append(f"output limit reached ({max_output} bytes): the program was stopped")
    elif result.killed_reason == "cpu_limit":
        parts.append(f"CPU time limit reached ({cpu_limit(timeout)}s): the program was stopped")
    elif result.killed_reason is not None:  # "signal N"
        parts.append(f"the program was killed ({result.killed_reason})")
    elif not result.stderr:
        parts.append(f"exit status {result.exit_code}")
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def python(code: str) -> str:
    """Run a Python program and return what it prints.

    The program runs in a sandbox without network access or files, with time and memory limits. If it raises,
    the result shows the end of the traceback; if it runs too long, it is stopped.

    Args:
        code: the complete Python program to run; print the values you want to see

    Returns:
        What the program printed (its standard output), plus the error if it failed.
    """
    return run_program(code, DEFAULT_TIMEOUT, DEFAULT_MEMORY_MB, DEFAULT_MAX_OUTPUT)


def python_tool(
    timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB, max_output: int = DEFAULT_MAX_OUTPUT
) -> Callable[[str], str]:
    """The ``python`` tool with these limits: `timeout` wall seconds per program (its CPU time at
    :func:`cpu_limit`), `memory_mb` of address space, `max_output` bytes of stdout + stderr (past them the program
    is stopped). It has :func:`python`'s name, docstring and signature, so the same schema.

    The sandbox needs a moment to start each program: keep the Toolbox's own timeout a few seconds above
    `timeout`, or the Toolbox stops waiting first (its "timed out" is then an error result)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"python_tool: timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 16:
        raise ValueError(f"python_tool: memory_mb must be an integer of at least 16, got {memory_mb!r}")
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
        raise ValueError(f"python_tool: max_output must be a positive integer (bytes), got {max_output!r}")

    @functools.wraps(python)
    def tool(code: str) -> str:
        return run_program(code, float(timeout), memory_mb, max_output)

    del tool.__wrapped__  # the signature is its own (the same); unwrapping must not reach other limits
    return tool


__all__ = ["cpu_limit", "python", "python_tool", "run_program"]
