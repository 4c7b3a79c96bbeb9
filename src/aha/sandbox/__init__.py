"""A local sandbox for untrusted Python (code rewards): ``aha.sandbox.run(code, stdin=...) -> Result``.

Each execution runs in its own processes, set up by ``launcher.py`` (needs root, as the trainer runs here):

* **namespaces** (``unshare(2)`` through ctypes, since ``os.unshare`` is Python >= 3.12 only): a new PID
  namespace (the program sees only its own processes, ``kill(-1)`` reaches nothing else, and when the run
  ends the kernel kills every process left in it, even one that left the process group with ``setsid``), a
  network namespace with only a loopback that is down (every ``connect()`` fails at once with
  ENETUNREACH, to 127.0.0.1 as to the outside: no packet can leave), a mount namespace where every mount is
  re-mounted read-only and nosuid, a fresh ``/proc``, IPC and UTS namespaces;
* **an unprivileged uid/gid** (one per parallel slot and trainer process, ``uid_for``): file permissions
  apply (``/etc/shadow``, 0600 files, ``/root`` are unreadable), signals to the root processes of the
  sandbox fail, and ``RLIMIT_NPROC`` (ignored for root) caps the processes; ``PR_SET_NO_NEW_PRIVS``;
* **limits**: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``,
  no core dumps, a wall-clock timeout, and stdout + stderr read with a bound (killed on overflow);
* **a fresh working directory**: a tmpfs of ``disk_mb`` (the only writable place), on a throwaway
  ``tempfile`` directory removed afterwards;
* ``python -I -S -B`` (no site-packages, no user environment) with a scrubbed environment.

Shells and subprocesses are allowed (``subprocess.run(["sh", "-c", ...])`` works) but contained by all the
above: same uid, limits, namespaces. At most ``max_parallel`` executions run at once (``set_max_parallel``).

A failure of the sandbox itself (no namespaces, no interpreter, setup timeout) raises :class:`SandboxError`,
never a Result: a reward must not score the model 0 for it.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BOOT = Path(__file__).with_name("launcher.py")
LAUNCHER = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)  # runs launcher.py as root
SETUP_TIMEOUT = 20.0  # seconds for the namespaces to be up (generous: the machine may be loaded)
STOP_GRACE = 5.0  # seconds for the keeper to tear the namespace down before the process group is SIGKILLed
UID_BASE, UIDS_PER_PROCESS, PROCESS_BANDS = 20_000, 100, 400  # sandbox uids: 20000..59999


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): never to be scored as a wrong answer."""


@dataclass
class Result:
    """How one execution ended. ``exit_code`` is negative for a signal (as in subprocess) and None when the
    sandbox killed the program (``killed_reason`` "timeout" or "output_limit"); "cpu_limit" when RLIMIT_CPU
    struck (SIGXCPU), "signal N" for another signal."""

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool = False
    killed_reason: str | None = None
    duration: float = 0.0
    truncated: bool = False
    uid: int = -1

    @property
    def ok(self) -> bool:
        """Ran to the end with exit status 0."""
        return self.exit_code == 0 and self.killed_reason is None


_cond = threading.Condition()
_busy: set[int] = set()
_max_parallel = max(1, min(4, os.cpu_count() or 1))


def set_max_parallel(n: int) -> None:
    """At most `n` executions at once in this process (default: min(4, CPUs))."""
    global _max_parallel
    if not isinstance(n, int) or not 1 <= n <= UIDS_PER_PROCESS:
        raise ValueError(f"sandbox: max_parallel must be an integer from 1 to {UIDS_PER_PROCESS}, got {n!r}")
    with _cond:
        _max_parallel = n
        _cond.notify_all()


def max_parallel() -> int:
    return _max_parallel


def uid_for(slot: int) -> int:
    """The sandbox uid of a parallel slot: distinct per slot and (very likely) per process, so the process
    count RLIMIT_NPROC caps is that of one execution, not shared with concurrent ones."""
    return UID_BASE + (os.getpid() % PROCESS_BANDS) * UIDS_PER_PROCESS + slot


@contextmanager
def _slot() -> Iterator[int]:
    with _cond:
        while len(_busy) >= _max_parallel:
            _cond.wait()
        slot = min(set(range(UIDS_PER_PROCESS)) - _busy)
        _busy.add(slot)
    try:
        yield slot
    finally:
        with _cond:
            _busy.discard(slot)
            _cond.notify_all()


def interpreter(python: str | None = None) -> tuple[str, str, str | None]:
    """(interpreter, its prefix, the topmost ancestor of the prefix the sandbox uid cannot traverse or None).

    Default: this interpreter's base (a venv's python is a symlink to it; -S ignores the venv anyway)."""
    exe = os.path.realpath(python or getattr(sys, "_base_executable", None) or sys.executable)
    if not os.access(exe, os.X_OK):
        raise SandboxError(f"sandbox: no interpreter at {exe}")
    base = os.path.realpath(sys.base_prefix)
    prefix = base if python is None and exe.startswith(base + os.sep) else os.path.dirname(os.path.dirname(exe))
    hidden = None
    parts = Path(prefix).parts
    for i in range(1, len(parts)):
        d = os.path.join(*parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            hidden = d
            break
    if hidden == "/":
        raise SandboxError("sandbox: / is not searchable by other users")
    return exe, prefix, hidden


def run(
    code: str,
    *,
    stdin: str = "",
    timeout: float = 2.0,
    cpu_seconds: int = 2,
    memory_mb: int = 256,
    max_output: int = 64_000,
    max_processes: int = 16,
    disk_mb: int = 16,
    python: str | None = None,
) -> Result:
    """Run untrusted Python `code` (fed `stdin`) in the sandbox; see the module docstring for what it may do.

    `timeout`: wall seconds from the program's start; `max_output`: bytes of stdout + stderr kept, past them
    the program is killed. Raises SandboxError when the sandbox cannot run it."""
    if timeout <= 0 or cpu_seconds < 1 or memory_mb < 16 or max_output < 0 or max_processes < 1 or disk_mb < 1:
        raise ValueError(
            "sandbox: timeout > 0, cpu_seconds >= 1, memory_mb >= 16, max_output >= 0, max_processes >= 1 "
            f"and disk_mb >= 1 needed; got {timeout=}, {cpu_seconds=}, {memory_mb=}, {max_output=}, "
            f"{max_processes=}, {disk_mb=}"
        )
    if os.geteuid() != 0:
        raise SandboxError("sandbox: needs root (namespaces, mounts and switching to the sandbox uid)")
    exe, prefix, hidden = interpreter(python)
    with _slot() as slot:
        uid = uid_for(slot)
        tmp = tempfile.mkdtemp(prefix="aha_sandbox_")
        try:
            limits = {"cpu_seconds": cpu_seconds, "memory_mb": memory_mb, "max_processes": max_processes}
            limits["disk_mb"] = disk_mb
            return _run_in(tmp, code, stdin, uid, exe, prefix, hidden, timeout, max_output, limits)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _run_in(
    tmp: str,
    code: str,
    stdin: str,
    uid: int,
    exe: str,
    prefix: str,
    hidden: str | None,
    timeout: float,
    max_output: int,
    limits: dict,
) -> Result:
    os.chmod(tmp, 0o711)  # the program may traverse it to its working directory, not list or read it
    for sub in ("work", "prefix"):
        os.mkdir(os.path.join(tmp, sub), 0o700)
    Path(tmp, "main.py").write_text(code, encoding="utf-8")
    stdin_path = Path(tmp, "stdin")
    stdin_path.write_text(stdin, encoding="utf-8")
    for name in ("main.py", "stdin"):
        os.chmod(os.path.join(tmp, name), 0o600)
    status_r, status_w = os.pipe()
    cfg = {
        "dir": tmp,
        "status_fd": status_w,
        "uid": uid,
        "gid": uid,
        "python": exe,
        "prefix": prefix,
        "hide": hidden,
        "disk_mb": limits["disk_mb"],
        "limits": limits,
    }
    start = time.monotonic()
    try:
        with open(stdin_path, "rb") as fin:
            proc = subprocess.Popen(
                [LAUNCHER, "-I", "-S", "-B", str(BOOT), json.dumps(cfg)],
                stdin=fin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
    except OSError as e:
        os.close(status_r)
        raise SandboxError(f"sandbox: cannot start {LAUNCHER}: {e}") from e
    finally:
        os.close(status_w)
    try:
        return _supervise(proc, status_r, start, timeout, max_output, uid)
    finally:
        _kill_group(proc)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(status_r)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the keeper is not reaped yet, so its group id is still ours
    except (ProcessLookupError, PermissionError):
        pass


def _supervise(
    proc: subprocess.Popen, status_r: int, start: float, timeout: float, max_output: int, uid: int
) -> Result:
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_r: bytearray()}
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    total, started_at, reason, stop_at, hard_killed = 0, None, None, None, False
    truncated = False
    try:
        while sel.get_map():
            now = time.monotonic()
            if stop_at is None:
                deadline = start + SETUP_TIMEOUT if started_at is None else started_at + timeout
                if now >= deadline:
                    reason = "timeout" if started_at is not None else "setup_timeout"
                    stop_at = _stop(proc)
                    continue
            elif not hard_killed and now >= stop_at + STOP_GRACE:
                _kill_group(proc)
                hard_killed = True
            wait = (deadline - now) if stop_at is None else (stop_at + STOP_GRACE - now if not hard_killed else 1.0)
            for key, _ in sel.select(timeout=max(0.0, wait)):
                fd = key.fd
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(fd)
                    continue
                if fd == status_r:
                    bufs[fd] += data
                    if started_at is None and b'"started"' in bufs[fd]:
                        started_at = time.monotonic()
                    continue
                room = max_output - total
                if len(data) > room:
                    data, truncated = data[:room], True
                    if reason is None:
                        reason = "output_limit"
                        stop_at = _stop(proc)
                bufs[fd] += data
                total += len(data)
    finally:
        sel.close()
    messages = [json.loads(line) for line in bufs[status_r].decode().splitlines() if line.strip()]
    errors = [m["error"] for m in messages if "error" in m]
    stderr = bufs[proc.stderr.fileno()].decode("utf-8", errors="replace")
    if errors:
        raise SandboxError("sandbox: " + errors[0])
    if reason == "setup_timeout":
        raise SandboxError(f"sandbox: the namespaces were not up after {SETUP_TIMEOUT:.0f} s")
    exit_code: int | None = None
    if reason is None:
        ends = [m for m in messages if "exit" in m or "signal" in m]
        if not ends:
            raise SandboxError(f"sandbox: ended without a status (launcher stderr: {stderr[-2000:]!r})")
        if "signal" in ends[0]:
            sig = ends[0]["signal"]
            exit_code = -sig
            reason = "cpu_limit" if sig == signal.SIGXCPU else f"signal {sig}"
        else:
            exit_code = ends[0]["exit"]
    return Result(
        stdout=bufs[proc.stdout.fileno()].decode("utf-8", errors="replace"),
        stderr=stderr,
        exit_code=exit_code,
        timed_out=reason == "timeout",
        killed_reason=reason,
        duration=time.monotonic() - (started_at or start),
        truncated=truncated,
        uid=uid,
    )


def _stop(proc: subprocess.Popen) -> float:
    """Ask the keeper to kill the namespace (it reaps it, so nothing is left); returns when it was asked."""
    try:
        proc.send_signal(signal.SIGUSR1)
    except ProcessLookupError:
        pass
    return time.monotonic()


__all__ = ["Result", "SandboxError", "interpreter", "max_parallel", "run", "set_max_parallel", "uid_for"]
