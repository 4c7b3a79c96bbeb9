"""Stopping a long run cleanly on SIGINT (Ctrl-C) and SIGTERM (what schedulers and ``kill`` send).

The command line installs the handlers for the whole command with :func:`graceful_signals` (a context manager:
the previous handlers come back when it ends, so nothing stays installed after the Python API returns). Inside
it, a long job marks the stretch where it can stop at a safe point with :func:`stoppable` (the training loop's
steps, ``aha sample``'s chunks) and polls :func:`requested` at those points:

- the first signal inside a stoppable stretch is only recorded (and announced on stderr); the job finishes what
  it is doing (the optimiser step, the chunk), saves what it has, and raises :class:`Interrupted` with
  ``saved`` set (the checkpoint, the partial output);
- a signal outside one, or a second signal, raises :class:`Interrupted` at once (``saved`` None): what was saved
  before stays intact, since every save is atomic (a temporary file or directory renamed into place).

:class:`Interrupted` is a ``KeyboardInterrupt``, so ``except Exception`` clauses let it through; the command line
turns it into one line with the command to resume and the exit status ``128 + signal`` (130 for SIGINT, 143 for
SIGTERM). Without :func:`graceful_signals` (the Python API) nothing changes: Ctrl-C raises KeyboardInterrupt
where it lands and SIGTERM ends the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by signal `signum`. `saved`: what it saved on the way out so that it can continue (a
    checkpoint directory, a partial output), None when it stopped at once; `after`: how far it got ("step 5")."""

    def __init__(self, signum: int, saved: Path | None = None, after: str | None = None) -> None:
        self.signum, self.saved, self.after = int(signum), saved, after
        super().__init__(self.describe())

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        name = signal.Signals(self.signum).name
        if self.saved is None:
            return f"stopped at once by {name}: nothing saved now (what was saved before is intact)"
        after = f" after {self.after}" if self.after else ""
        return f"stopped by {name}{after}; saved {self.saved}"


class SignalGuard:
    """The handler :func:`graceful_signals` installs: records the first signal inside a stoppable stretch, raises
    :class:`Interrupted` for any other."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal a stoppable stretch has yet to act on
        self.depth = 0  # nested stoppable stretches now running

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.depth and self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            # os.write, not print: a handler may run in the middle of another write to stderr
            note = f"\n{name}: stopping once the current step is done, after saving (send it again to stop at once)\n"
            os.write(2, note.encode())
            return
        raise Interrupted(signum)


_guards: list[SignalGuard] = []  # the installed guards, innermost last


@contextlib.contextmanager
def graceful_signals() -> Iterator[SignalGuard | None]:
    """Handle SIGINT and SIGTERM as the module docstring says for the duration of the block, then put the previous
    handlers back. Signal handlers belong to the main thread: elsewhere this does nothing (and yields None)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    guard = SignalGuard()
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, guard)
    _guards.append(guard)
    try:
        yield guard
    finally:
        _guards.remove(guard)
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """A stretch of work that polls :func:`requested` at its safe points (a no-op without
    :func:`graceful_signals`)."""
    guard = _guards[-1] if _guards else None
    if guard is None:
        yield
        return
    if guard.depth == 0:
        guard.signum = None  # a signal acted on by an earlier stretch is spent
    guard.depth += 1
    try:
        yield
    finally:
        guard.depth -= 1


def requested() -> int | None:
    """The signal a stoppable stretch should stop for (at its next safe point), or None."""
    return _guards[-1].signum if _guards else None
