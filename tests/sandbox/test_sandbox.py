"""aha.sandbox: each attack is contained, the test process survives, and a normal program still runs after it."""

from __future__ import annotations

import os
import secrets
import socket
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aha import sandbox
from aha.sandbox import SandboxError


@pytest.fixture(scope="module", autouse=True)
def needs_sandbox():
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root (namespaces, mounts, switching uid)")
    try:
        sandbox.run("pass")
    except SandboxError as e:
        pytest.skip(f"no sandbox here: {e}")


def leftovers(uid: int) -> list[int]:
    """Processes (any state, zombies included) of the sandbox uid."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        if str(uid) in uids:
            found.append(int(pid))
    return found


def still_fine(result: sandbox.Result) -> None:
    """After an attack: nothing of it is left running, and an ordinary program runs correctly."""
    assert leftovers(result.uid) == []
    again = sandbox.run("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 3\n")
    assert again.ok and again.stdout == "6\n" and again.stderr == ""


def test_normal_program_stdin_and_isolation(monkeypatch):
    monkeypatch.setenv("AHA_SANDBOX_SECRET", "s3cret")
    code = (
        "import os, sys\n"
        "print(input()[::-1])\n"
        "print(sorted(os.environ))\n"
        "print(sys.flags.isolated, sys.flags.no_site, os.getuid() != 0, os.getcwd())\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "print(open('scratch.txt').read())\n"
        "print(os.getpid())\n"
    )
    r = sandbox.run(code, stdin="abc\n")
    assert r.ok and r.exit_code == 0 and not r.timed_out and r.killed_reason is None, r
    lines = r.stdout.splitlines()
    assert lines[0] == "cba"
    assert lines[1] == "['HOME', 'LANG', 'PATH', 'TMPDIR']"  # scrubbed: no AHA_SANDBOX_SECRET
    isolated, no_site, unprivileged, cwd = lines[2].split()
    assert (isolated, no_site, unprivileged) == ("1", "1", "True")
    assert lines[3] == "ok"
    assert int(lines[4]) <= 3  # own PID namespace
    assert not os.path.exists(cwd)  # the throwaway working directory is gone
    still_fine(r)


def test_exit_code_and_exception():
    assert sandbox.run("raise SystemExit(3)").exit_code == 3
    r = sandbox.run("1/0")
    assert r.exit_code == 1 and "ZeroDivisionError" in r.stderr and not r.ok


def test_infinite_loop_times_out():
    t = time.monotonic()
    r = sandbox.run("while True:\n    pass", timeout=1.0)
    assert r.timed_out and r.killed_reason == "timeout" and r.exit_code is None
    assert time.monotonic() - t < 5
    still_fine(r)


def test_cpu_limit():
    r = sandbox.run("while True:\n    pass", timeout=10.0, cpu_seconds=1)
    assert r.killed_reason == "cpu_limit" and r.exit_code == -24 and not r.timed_out
    assert r.duration < 4
    still_fine(r)


def test_fork_bomb_contained():
    code = (
        "import os, time\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(100)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n, flush=True)\n"
        "while True:\n"  # then the classic bomb, until the wall clock stops it
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    t = time.monotonic()
    r = sandbox.run(code, timeout=1.0, max_processes=16)
    assert r.timed_out
    assert 0 < int(r.stdout.split()[0]) < 16  # RLIMIT_NPROC: at most 16 processes of the sandbox uid
    assert time.monotonic() - t < 6
    still_fine(r)


def test_setsid_escape_is_killed():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\nprint('bye')"
    r = sandbox.run(code)
    assert r.ok and r.stdout == "bye\n"
    still_fine(r)  # the daemon died with the PID namespace


def test_huge_allocation_fails_fast():
    t = time.monotonic()
    r = sandbox.run("x = bytearray(10 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert "MemoryError" in r.stderr and "allocated" not in r.stdout and r.exit_code == 1
    assert time.monotonic() - t < 5
    still_fine(r)


def test_no_connection_to_host_loopback():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "s = socket.socket()\n"
            "s.settimeout(3)\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {port}))\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
        )
        r = sandbox.run(code)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert r.stdout.startswith("refused") and "connected" not in r.stdout
    still_fine(r)


def test_no_route_out_fails_at_once():
    code = (
        "import socket, time\n"
        "t = time.monotonic()\n"
        "s = socket.socket()\n"
        "s.settimeout(5)\n"
        "try:\n"
        "    s.connect(('10.255.255.1', 80))\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(e.errno, time.monotonic() - t)\n"
    )
    r = sandbox.run(code, timeout=8.0)
    errno, elapsed = r.stdout.split()
    assert int(errno) == 101 and float(elapsed) < 0.5  # ENETUNREACH: no interface, no route, nothing sent
    still_fine(r)


@pytest.mark.parametrize("where", ["/tmp", "/work", "/root", "/"])
def test_cannot_write_outside_workdir(where):
    target = os.path.join(where, f"aha_sandbox_escape_{secrets.token_hex(6)}")
    r = sandbox.run(f"open({target!r}, 'w').write('escaped')\nprint('wrote')")
    assert r.exit_code == 1 and "wrote" not in r.stdout
    assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr
    assert not os.path.exists(target)
    still_fine(r)


def test_cannot_read_root_only_files():
    fd, path = tempfile.mkstemp(prefix="aha_sandbox_secret_")
    try:
        os.write(fd, b"top secret")
        os.close(fd)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        files = [path] + (["/etc/shadow"] if os.path.exists("/etc/shadow") else [])
        for f in files:
            r = sandbox.run(f"print(open({f!r}).read())")
            assert r.exit_code == 1 and "PermissionError" in r.stderr and "top secret" not in r.stdout
        still_fine(r)
    finally:
        os.unlink(path)


def test_one_gigabyte_of_output_is_capped():
    t = time.monotonic()
    r = sandbox.run("import sys\nb = 'x' * 10**6\nfor _ in range(1000):\n    sys.stdout.write(b)", max_output=64_000)
    assert r.killed_reason == "output_limit" and r.truncated and r.exit_code is None
    assert len(r.stdout) + len(r.stderr) <= 64_000
    assert time.monotonic() - t < 5
    still_fine(r)


def test_killing_the_parent_fails():
    r = sandbox.run("import os\nos.kill(os.getppid(), 9)")
    assert "PermissionError" in r.stderr  # the parent in the sandbox is root; the test process is not visible
    r = sandbox.run("import os\ntry:\n    os.kill(-1, 9)\nexcept OSError as e:\n    print(e.errno)")
    assert r.exit_code in (0, -9)  # kill(-1) reaches at most the sandbox's own processes
    still_fine(r)


def test_shell_is_allowed_but_contained():
    target = f"/tmp/aha_sandbox_escape_{secrets.token_hex(6)}"
    code = (
        "import subprocess\n"
        f"p = subprocess.run(['sh', '-c', 'id -u; echo hi > f; cat f; echo x > {target}'], capture_output=True, "
        "text=True)\n"
        "print(p.stdout, p.returncode)\n"
    )
    r = sandbox.run(code)
    assert r.ok, r
    uid, hi, rc = r.stdout.split()
    assert int(uid) == r.uid and hi == "hi" and rc != "0"
    assert not os.path.exists(target)
    still_fine(r)


def test_sandbox_failures_raise(tmp_path):
    with pytest.raises(SandboxError, match="no interpreter"):
        sandbox.run("print(1)", python="/nonexistent/python3")
    fd, secret_exe = tempfile.mkstemp(prefix="aha_sandbox_exe_")  # root-only: the sandbox uid cannot exec it
    os.write(fd, b"#!/bin/sh\necho 1\n")
    os.close(fd)
    try:
        os.chmod(secret_exe, 0o700)
        with pytest.raises(SandboxError, match="cannot start the program"):
            sandbox.run("print(1)", python=secret_exe)
    finally:
        os.unlink(secret_exe)
    with pytest.raises(ValueError):
        sandbox.run("print(1)", timeout=0)


def test_parallel_runs_bounded():
    old = sandbox.max_parallel()
    sandbox.set_max_parallel(2)
    active, peak, lock = [0], [0], threading.Lock()
    real_run_in = sandbox._run_in

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real_run_in(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    sandbox._run_in = counting
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda i: sandbox.run(f"import time\ntime.sleep(0.2)\nprint({i} * 2)"), range(6)))
    finally:
        sandbox._run_in = real_run_in
        sandbox.set_max_parallel(old)
    assert [r.stdout for r in results] == [f"{2 * i}\n" for i in range(6)]
    assert peak[0] == 2 and len({r.uid for r in results}) == 2
    with pytest.raises(ValueError):
        sandbox.set_max_parallel(0)
