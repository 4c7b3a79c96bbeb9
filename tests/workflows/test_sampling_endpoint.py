"""``aha sample --endpoint``: a fake OpenAI-compatible server (stdlib, loopback, port 0) with known completions.

Exactly the verified completions are kept, pass rates match a hand count, the request carries the sampling
settings and the prompt rendered with the local chat template (as token ids), the chat API is used without a
local tokenizer, and every failure is one error naming the endpoint with a non-zero exit. No vLLM needed.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aha.cli import main
from aha.tasks import get_task
from aha.workflows.sampling import SampleConfig, request_seed

N = 4
LIMIT = 20


def _texts(question: str, n: int) -> list[str]:
    """For a+b: the first (a+b) % 5 of the n completions are correct (two distinct texts, so a third or fourth
    correct one duplicates an earlier one), the others answer a+b+1."""
    a, b = map(int, question.split("+"))
    s = a + b
    return [
        f"<think>t{j % 2}</think><answer>{s}</answer>" if j < s % 5 else f"<think>x</think><answer>{s + 1}</answer>"
        for j in range(n)
    ]


class FakeServer:
    """/v1/completions (prompt = token ids, decoded with `tokenizer`) and /v1/chat/completions. `fail` makes every
    request answer that HTTP status; `short` drops the last choice (a malformed answer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail: int | None = None
        self.short = False
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, body))
                if outer.fail is not None:
                    self._send(outer.fail, {"error": {"message": "model overloaded"}})
                    return
                if self.path == "/v1/completions":
                    text = outer.tokenizer.decode(body["prompt"], skip_special_tokens=True)
                    choices = [{"index": j, "text": t} for j, t in enumerate(_texts(_question(text), body["n"]))]
                elif self.path == "/v1/chat/completions":
                    question = body["messages"][-1]["content"]
                    texts = _texts(question, body["n"])
                    choices = [
                        {"index": j, "message": {"role": "assistant", "content": t}} for j, t in enumerate(texts)
                    ]
                else:
                    self._send(404, {"detail": "Not Found"})
                    return
                if outer.short:
                    choices = choices[:-1]
                self._send(200, {"id": "x", "object": "text_completion", "choices": choices[::-1]})  # any order

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _question(text: str) -> str:
    return re.findall(r"\d+\+\d+", text)[-1]


@pytest.fixture
def server(small_tiny) -> Iterator[FakeServer]:
    with FakeServer(small_tiny[1]) as s:
        yield s


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _expected(limit: int, seed: int = 0) -> tuple[list[float], int]:
    """Hand count: pass rate per prompt, and kept lines (distinct correct texts: min(c, 2)); `seed` picks the rows."""
    rows = get_task("arithmetic").rows("train", limit, seed)
    rates = [int(r["answer"]) % 5 / N for r in rows]
    return rates, sum(min(int(r["answer"]) % 5, 2) for r in rows)


def _check_output(out: Path, seed: int = 0) -> None:
    rates, kept = _expected(LIMIT, seed)
    side = _read(out.with_name(f"{out.stem}.pass_rates.jsonl"))
    assert [r["pass_rate"] for r in side] == rates
    assert [r["accepted"] for r in side] == [round(x * N) for x in rates]
    lines = _read(out)
    assert len(lines) == kept == sum(r["kept"] for r in side) and kept > 0
    task = get_task("arithmetic")
    for line in lines:
        assert task.check(line["completion"][0]["content"], line)
        assert line["pass_rate"] == int(line["answer"]) % 5 / N
    pairs = [(json.dumps(x["prompt"]), x["completion"][0]["content"]) for x in lines]
    assert len(set(pairs)) == len(pairs)


def _args(url: str, model: str, out: Path, *extra: str) -> list[str]:
    base = ["sample", "--endpoint", url, "--model", model, "--data", "arithmetic", "--n", str(N)]
    return [*base, "--limit", str(LIMIT), "--out", str(out), *extra]


def test_completions_api_with_the_local_chat_template(tmp_path, model_dir, server, small_tiny) -> None:
    out = tmp_path / "e.jsonl"
    extra = ["--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "33", "--seed", "5"]
    assert main(_args(server.url, model_dir, out, *extra)) == 0
    _check_output(out, seed=5)
    tok = small_tiny[1]
    rows = get_task("arithmetic").rows("train", LIMIT, 5)
    assert len(server.requests) == LIMIT and {p for p, _ in server.requests} == {"/v1/completions"}
    by_prompt = {tuple(b["prompt"]): b for _, b in server.requests}
    for i, row in enumerate(rows):
        rendered = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        body = by_prompt[tuple(tok(rendered, add_special_tokens=False)["input_ids"])]  # the template, as token ids
        assert body["model"] == model_dir and body["n"] == N and body["max_tokens"] == 33
        assert body["temperature"] == 0.7 and body["top_p"] == 0.9
        assert body["seed"] == request_seed(5, i, N)
    assert len({b["seed"] for _, b in server.requests}) == LIMIT


def test_chat_api_without_a_local_tokenizer(tmp_path, server) -> None:
    out = tmp_path / "c.jsonl"
    assert main(_args(server.url.removesuffix("/v1"), "served-name", out)) == 0  # a bare host:port means /v1
    _check_output(out)
    assert {p for p, _ in server.requests} == {"/v1/chat/completions"}
    assert all(b["model"] == "served-name" and b["messages"][0]["role"] == "user" for _, b in server.requests)


def test_greedy_asks_for_one_completion_and_repeats_it(tmp_path, model_dir, server) -> None:
    out = tmp_path / "g.jsonl"
    assert main(_args(server.url, model_dir, out, "--temperature", "0")) == 0
    assert {b["n"] for _, b in server.requests} == {1}  # vLLM refuses n > 1 with greedy sampling
    rows = get_task("arithmetic").rows("train", LIMIT, 0)
    side = _read(tmp_path / "g.pass_rates.jsonl")  # the first text answers right iff (a+b) % 5 > 0
    assert [r["accepted"] for r in side] == [N * (int(r["answer"]) % 5 > 0) for r in rows]
    assert len(_read(out)) == sum(int(r["answer"]) % 5 > 0 for r in rows)  # n identical texts kept once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors_name_the_endpoint_and_exit_non_zero(tmp_path, model_dir, server, capsys) -> None:
    out = tmp_path / "x.jsonl"
    down = f"http://127.0.0.1:{_free_port()}/v1"
    assert main(_args(down, model_dir, out)) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and down in err and "cannot connect" in err and "Traceback" not in err

    server.fail = 503
    assert main(_args(server.url, model_dir, out)) == 1
    err = capsys.readouterr().err
    assert server.url in err and "HTTP 503" in err and "model overloaded" in err

    server.fail, server.short = None, True
    assert main(_args(server.url, model_dir, out)) == 1
    assert f"asked for {N} completions" in capsys.readouterr().err

    for bad in ("localhost:8000", "ftp://127.0.0.1/v1", "http://"):
        assert main(_args(bad, model_dir, out)) == 1
        assert "--endpoint must be an http(s):// URL" in capsys.readouterr().err
    assert main(_args(server.url, model_dir, out, "--backend", "hf")) == 1
    assert "exclusive" in capsys.readouterr().err
    assert main(_args(server.url, "m", out, "--tokenizer", str(tmp_path / "nope"))) == 1
    assert "nope does not exist" in capsys.readouterr().err
    assert not out.exists()  # no failure left an output behind


def test_request_seeds_are_distinct_streams() -> None:
    n = SampleConfig().n
    seeds = {request_seed(s, i, n) + j for s in range(3) for i in range(50) for j in range(n)}
    assert len(seeds) == 3 * 50 * n
