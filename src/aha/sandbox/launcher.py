"""The sandbox's launcher, run as ``python -I -S launcher.py CONFIG_JSON`` by :func:`aha.sandbox.run`.

Stdlib only (it runs without site-packages). As root (config ``mode`` "namespaces") three processes:

* **keeper** (this script, host namespaces): ``unshare(CLONE_NEWPID)``, forks the init, waits for it and
  reports how it ended. On SIGUSR1/SIGTERM (the parent's "stop": timeout, output overflow) it SIGKILLs the
  init; the kernel then kills every process of the PID namespace, and the keeper reaps the init only after
  they are all gone, so when the keeper exits nothing of the run is left.
* **init** (PID 1 of the new PID namespace, still root): ``unshare`` a new mount, network, IPC and UTS
  namespace; mounts a fresh ``/proc`` (only the sandbox's processes are visible), re-mounts every mount
  read-only, mounts a small tmpfs as the working directory, then forks the program and reaps until it ends.
  When the init exits, all processes left in the namespace are killed.
* **program**: resource limits, no supplementary groups, the sandbox uid/gid, ``PR_SET_NO_NEW_PRIVS``, then
  ``execve`` of ``python -I -S -B main.py`` with a scrubbed environment.

Under bubblewrap (``mode`` "bubblewrap"; bwrap made the namespaces and the file system view, and runs this as
PID 1 with ``--as-pid-1``) only two: the **init** (``bwrap_init``: no signal handlers, not dumpable, the same
route check) and the **program** (the same limits, ``PR_SET_NO_NEW_PRIVS``, no uid switch: the user namespace
maps only the caller's uid). To stop early, the parent writes to the init's stop pipe (or closes it, or dies): the
init exits, and bwrap, which reaps it, then exits too; ``--die-with-parent`` kills the init if bwrap dies first.

Everything that goes wrong before the ``execve`` is written as ``{"error": ...}`` to the status pipe (fd given
in the config): it is a failure of the sandbox, not of the program. Messages are JSON lines.
"""

import ctypes
import json
import os
import re
import resource
import signal
import socket
import sys
import threading
import traceback

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
KEEP_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

CFG = json.loads(sys.argv[1])
STATUS_FD = int(CFG["status_fd"])


def report(**msg: object) -> None:
    """One JSON line on the status pipe (kept under PIPE_BUF so lines from several processes never mix)."""
    line = json.dumps(msg)
    if len(line) > 3500:
        line = json.dumps({k: (str(v)[-3000:] if k == "error" else v) for k, v in msg.items()})
    os.write(STATUS_FD, (line + "\n").encode())


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(_b(src), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def prctl(option: int, arg: int) -> None:
    _check(libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def mountpoints() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, set(fields[5].split(","))))
    return out


def remount_all_readonly() -> None:
    """Bind-remount every mount read-only and nosuid, keeping the flags the kernel locks (nodev, noexec, atime)."""
    for point, opts in mountpoints():
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
        for name, bit in KEEP_FLAGS.items():
            if name in opts:
                flags |= bit
        try:
            mount(None, point, None, flags)
        except OSError as e:
            if e.errno not in (2, 20):  # ENOENT/ENOTDIR: a mount point hidden by a later mount
                raise


def expose_interpreter(prefix: str, hidden: str, stage: str) -> None:
    """Make `prefix` (e.g. /root/.pyenv/versions/3.11) reachable though its ancestor `hidden` (e.g. /root,
    mode 0700) is not: hide `hidden` under an empty tmpfs and bind `prefix` back at its own path."""
    mount(prefix, stage, None, MS_BIND | MS_REC)
    mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    mount(stage, prefix, None, MS_BIND | MS_REC)
    _check(libc.umount2(_b(stage), MNT_DETACH), f"umount {stage}")


def setup_namespace() -> str:
    """In the init: the private namespaces and the file system view; returns the working directory."""
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare(mount, net, ipc, uts)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this PID namespace's processes only
    if CFG.get("hide"):
        expose_interpreter(CFG["prefix"], CFG["hide"], os.path.join(CFG["dir"], "prefix"))
    with open(os.path.join(CFG["dir"], "main.py"), "rb") as f:
        code = f.read()
    remount_all_readonly()
    work = os.path.join(CFG["dir"], "work")
    uid, gid = CFG["uid"], CFG["gid"]
    opts = f"size={CFG['disk_mb']}m,nr_inodes=4096,mode=0700,uid={uid},gid={gid}"
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    main = os.path.join(work, "main.py")
    with open(main, "wb") as f:
        f.write(code)
    os.chmod(main, 0o444)
    _check(libc.sethostname(b"sandbox", 7), "sethostname")
    check_no_route()
    return work


def check_no_route() -> None:
    """Prove there is no way out: a connect() anywhere must fail before any packet could leave."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.1", 9))
        except OSError:
            pass
        else:
            raise OSError("the sandbox's network namespace has a route out")


def exec_program(work: str) -> None:
    """In the program's process: limits, unprivileged uid, then execve (never returns)."""
    try:
        lim = CFG["limits"]
        mem = lim["memory_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_seconds"], lim["cpu_seconds"] + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["max_processes"], lim["max_processes"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (CFG["disk_mb"] << 20, CFG["disk_mb"] << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if CFG["mode"] == "namespaces":  # under bubblewrap the user namespace maps only the caller's uid
            os.setgroups([])
            os.setgid(CFG["gid"])
            os.setuid(CFG["uid"])
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid: a credential change clears it
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.chdir(work)
        os.set_inheritable(STATUS_FD, False)
        if CFG["mode"] == "bubblewrap":
            os.set_inheritable(CFG["stop_fd"], False)
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGPIPE, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "TMPDIR": work}
        python = CFG["python"]
        os.execve(python, [python, "-I", "-S", "-B", "main.py"], env)
    except BaseException:
        report(error="cannot start the program: " + traceback.format_exc())
    os._exit(127)


def init() -> None:
    """PID 1 of the sandbox: set up, start the program, reap everything, report the program's end."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the keeper dies -> the whole namespace dies
        work = setup_namespace()
    except BaseException:
        report(error="cannot set up the sandbox: " + traceback.format_exc())
        os._exit(1)
    report(started=True)
    start_and_reap(work)


def bwrap_init() -> None:
    """PID 1 under bubblewrap, with the program's uid: signals sent from inside the PID namespace reach it only
    through handlers, so it keeps none (not even Python's SIGINT one), and it is not dumpable (the program can
    neither ptrace it nor open /proc/1/mem); then as `init`."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        prctl(PR_SET_DUMPABLE, 0)
        check_no_route()
    except BaseException:
        report(error="cannot set up the sandbox: " + traceback.format_exc())
        os._exit(1)
    report(started=True)
    start_and_reap(CFG["work"], CFG["stop_fd"])


def start_and_reap(work: str, stop_fd: int | None = None) -> None:
    """Fork the program, reap every process until it ends, report how it ended, exit (the kernel then kills what
    is left in the PID namespace). With `stop_fd`, exit as soon as anything is written to it or it is closed."""
    pid = os.fork()
    if pid == 0:
        exec_program(work)
    if stop_fd is not None:
        threading.Thread(target=lambda: (os.read(stop_fd, 1), os._exit(0)), daemon=True).start()
    while True:
        got, status = os.wait()
        if got == pid:
            if os.WIFSIGNALED(status):
                report(signal=os.WTERMSIG(status))
            else:
                report(exit=os.waitstatus_to_exitcode(status))
            os._exit(0)  # the kernel now kills what is left in the namespace


def keeper() -> None:
    child = 0
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            os.kill(child, signal.SIGKILL)

    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        _check(libc.unshare(CLONE_NEWPID), "unshare(pid)")
    except BaseException:
        report(error="cannot set up the sandbox: " + traceback.format_exc())
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            init()
        finally:
            os._exit(1)
    child = pid
    if stopping:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)  # returns only once every process of the namespace is gone
    report(init=os.waitstatus_to_exitcode(status), stopped=stopping)
    os._exit(0)


if __name__ == "__main__":
    if CFG["mode"] == "bubblewrap":
        bwrap_init()
    else:
        keeper()
