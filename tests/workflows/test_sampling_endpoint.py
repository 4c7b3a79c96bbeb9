"""``aha sample --endpoint``: a fake OpenAI-compatible server (tests/conftest.py: stdlib, loopback, port 0) with
known completions.

Exactly the verified completions are kept, pass rates match a hand count, the request carries the sampling
settings and the prompt rendered with the local chat template (as token ids), the connections are kept alive
(at most --concurrency of them), the chat API is used without a local tokenizer, and every failure is one error
naming the endpoint with a non-zero exit. No vLLM needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from aha.cli import main
from aha.rollout.engine import request_seed
from aha.tasks import get_task

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


class Teacher:
    """The fake server's answers: /v1/completions (prompt = token ids, decoded with `tokenizer`) and
    /v1/chat/completions, with the completions of :func:`_texts` in any order; `short` drops the last choice
    (a malformed answer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.short = False

    def routes(self) -> dict[str, Any]:
        return {"POST /v1/completions": self.completions, "POST /v1/chat/completions": self.chat}

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.tokenizer.decode(body["prompt"], skip_special_tokens=True)
        return self._answer([{"index": j, "text": t} for j, t in enumerate(_texts(_question(text), body["n"]))])

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = _texts(_question(body["messages"][-1]["content"]), body["n"])
        return self._answer([{"index": j, "message": {"role": "assistant", "content": t}} for j, t in enumerate(texts)])

    def _answer(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        if self.short:
            choices = choices[:-1]
        return {"id": "x", "object": "text_completion", "choices": choices[::-1]}  # any order


def _question(text: str) -> str:
    return re.findall(r"\d+\+\d+", text)[-1]


@pytest.fixture
def teacher(small_tiny) -> Teacher:
    return Teacher(small_tiny[1])


@pytest.fixture
def server(fake_server, teacher):
    return fake_server(teacher.routes())


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
    assert len(server.requests) == LIMIT and set(server.paths()) == {"POST /v1/completions"}
    assert server.connections <= 8  # --concurrency's default: the connections are reused
    by_prompt = {tuple(b["prompt"]): b for _, _, b, _ in server.requests}
    for i, row in enumerate(rows):
        rendered = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        body = by_prompt[tuple(tok(rendered, add_special_tokens=False)["input_ids"])]  # the template, as token ids
        assert body["model"] == model_dir and body["n"] == N and body["max_tokens"] == 33
        assert body["temperature"] == 0.7 and body["top_p"] == 0.9
        assert body["seed"] == request_seed(5, i, N)
    assert len({b["seed"] for _, _, b, _ in server.requests}) == LIMIT


def test_concurrency_bounds_the_connections(tmp_path, model_dir, server) -> None:
    assert main(_args(server.url, model_dir, tmp_path / "e.jsonl", "--concurrency", "2")) == 0
    assert len(server.requests) == LIMIT and server.connections <= 2 and server.inflight_max <= 2


def test_chat_api_without_a_local_tokenizer(tmp_path, server) -> None:
    out = tmp_path / "c.jsonl"
    assert main(_args(server.url.removesuffix("/v1"), "served-name", out)) == 0  # a bare host:port means /v1
    _check_output(out)
    assert set(server.paths()) == {"POST /v1/chat/completions"}
    assert all(b["model"] == "served-name" and b["messages"][0]["role"] == "user" for _, _, b, _ in server.requests)


def test_greedy_asks_for_one_completion_and_repeats_it(tmp_path, model_dir, server) -> None:
    out = tmp_path / "g.jsonl"
    assert main(_args(server.url, model_dir, out, "--temperature", "0")) == 0
    assert {b["n"] for _, _, b, _ in server.requests} == {1}  # vLLM refuses n > 1 with greedy sampling
    rows = get_task("arithmetic").rows("train", LIMIT, 0)
    side = _read(tmp_path / "g.pass_rates.jsonl")  # the first text answers right iff (a+b) % 5 > 0
    assert [r["accepted"] for r in side] == [N * (int(r["answer"]) % 5 > 0) for r in rows]
    assert len(_read(out)) == sum(int(r["answer"]) % 5 > 0 for r in rows)  # n identical texts kept once


def test_a_failing_request_is_retried(tmp_path, model_dir, server) -> None:
    server.script = [503, "drop"]
    assert main(_args(server.url, model_dir, tmp_path / "r.jsonl", "--retries", "2", "--concurrency", "1")) == 0
    assert len(server.requests) == LIMIT + 2
    _check_output(tmp_path / "r.jsonl")


def test_errors_name_the_endpoint_and_exit_non_zero(tmp_path, model_dir, server, teacher, down_url, capsys) -> None:
    out = tmp_path / "x.jsonl"
    assert main(_args(down_url, model_dir, out, "--retries", "0")) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and down_url in err and "cannot connect" in err and "Traceback" not in err

    server.script = [503] * 2
    assert main(_args(server.url, model_dir, out, "--retries", "1", "--concurrency", "1")) == 1
    err = capsys.readouterr().err
    assert server.url in err and "HTTP 503" in err and "model overloaded" in err and "after 2 attempts" in err

    teacher.short = True
    assert main(_args(server.url, model_dir, out)) == 1
    assert f"asked for {N} completions" in capsys.readouterr().err

    for bad in ("localhost:8000", "ftp://127.0.0.1/v1", "http://"):
        assert main(_args(bad, model_dir, out)) == 1
        assert "--endpoint must be an http(s):// URL" in capsys.readouterr().err
    assert main(_args(server.url, model_dir, out, "--backend", "hf")) == 1
    assert "exclusive" in capsys.readouterr().err
    assert main(_args(server.url, "m", out, "--tokenizer", str(tmp_path / "nope"))) == 1
    assert "nope does not exist" in capsys.readouterr().err
    assert main(_args(server.url, model_dir, out, "--batch-size", "8")) == 1
    assert "--batch-size is for in-process sampling" in capsys.readouterr().err
    local = ["sample", "--model", model_dir, "--data", "arithmetic", "--out", str(out)]
    assert main([*local, "--timeout", "5", "--retries", "1"]) == 1
    assert "--timeout, --retries: only with --endpoint" in capsys.readouterr().err
    for flag, value in (("--concurrency", "0"), ("--timeout", "0"), ("--retries", "-1")):
        assert main(_args(server.url, model_dir, out, flag, value)) == 1
        assert f"{flag} must be" in capsys.readouterr().err
    assert not out.exists()  # no failure left an output behind
