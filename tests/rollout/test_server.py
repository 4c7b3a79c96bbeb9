"""The OpenAI-compatible client and the endpoint engine, against a fake local server (tests/conftest.py): JSON in
and out, kept-alive connections (counted on the server), bounded concurrency, retries with backoff (connection
failures, 429/5xx, Retry-After), timeouts, and one EndpointError per failure that names the URL."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from aha.rollout.engine import request_seed
from aha.rollout.sampler import SamplingParams
from aha.rollout.server import EndpointEngine, EndpointError, OpenAIClient, api_root


def _echo(body):
    return {"got": body}


@pytest.fixture
def server(fake_server):
    return fake_server({"POST /v1/echo": _echo, "GET /health": lambda _: {}, "GET /v1/models": lambda _: {"data": []}})


def test_api_root_and_request_urls() -> None:
    assert api_root("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"  # no path: its /v1
    assert api_root("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/v1"
    assert api_root("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    assert api_root("https://api.example.com/openai/v2") == "https://api.example.com/openai/v2"  # as given
    for bad in ("localhost:8000", "ftp://127.0.0.1/v1", "http://", "", None):
        with pytest.raises(ValueError, match=r"server_base_url must be an http\(s\):// URL"):
            api_root(bad, "server_base_url")
    with OpenAIClient("http://127.0.0.1:9/proxy/v1") as c:
        assert c.url("completions") == "http://127.0.0.1:9/proxy/v1/completions"
        assert c.url("/health") == "http://127.0.0.1:9/proxy/health"  # the server root: without /v1


def test_bad_settings_are_refused() -> None:
    for kwargs, match in (
        ({"read_timeout": 0}, "read_timeout must be > 0"),
        ({"connect_timeout": -1}, "connect_timeout must be > 0"),
        ({"retries": -1}, "retries and backoff must be >= 0"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
    ):
        with pytest.raises(ValueError, match=match):
            OpenAIClient("http://127.0.0.1:9", **kwargs)


def test_json_in_and_out_with_the_api_key(server) -> None:
    with OpenAIClient(server.url, api_key="sk-test") as c:
        assert c.post("echo", {"a": [1, 2]}) == {"got": {"a": [1, 2]}}
        assert c.get("/health") == {}
    (_, path, _, headers), (method, health, body, _) = server.requests
    assert path == "/v1/echo" and headers["Authorization"] == "Bearer sk-test"
    assert headers["Content-Type"] == "application/json"
    assert (method, health, body) == ("GET", "/health", None)
    with OpenAIClient(server.url) as c:
        c.get("models")
    assert "Authorization" not in server.requests[-1][3]


def test_one_connection_is_reused_for_every_request(server) -> None:
    with OpenAIClient(server.url, concurrency=1) as c:
        for i in range(10):
            assert c.post("echo", {"i": i}) == {"got": {"i": i}}
        assert c.post_many("echo", [{"i": i} for i in range(10)]) == [{"got": {"i": i}} for i in range(10)]
    assert len(server.requests) == 20 and server.connections == 1


def test_post_many_keeps_the_order_and_at_most_concurrency_in_flight(server) -> None:
    server.delay = 0.2
    with OpenAIClient(server.url, concurrency=4) as c:
        answers = c.post_many("echo", [{"i": i} for i in range(12)])
    assert answers == [{"got": {"i": i}} for i in range(12)]
    assert 2 <= server.inflight_max <= 4  # concurrent, and bounded
    assert server.connections <= 4  # each worker keeps its connection


def test_post_many_stops_at_the_first_failure(fake_server) -> None:
    def fail_second(body):
        return (400, {"error": "bad prompt"}) if body["i"] == 1 else {"ok": body["i"]}

    server = fake_server({"POST /v1/x": fail_second})
    with OpenAIClient(server.url, concurrency=1) as c, pytest.raises(EndpointError, match="HTTP 400.*bad prompt"):
        c.post_many("x", [{"i": i} for i in range(8)])
    assert len(server.requests) < 8  # the requests still queued were not sent


def test_dropped_connections_and_5xx_are_retried_with_backoff(server) -> None:
    server.script = ["drop", 503, 502]
    with OpenAIClient(server.url, retries=3, backoff=0.05) as c:
        start = time.monotonic()
        assert c.post("echo", {"x": 1}) == {"got": {"x": 1}}
        assert time.monotonic() - start >= 0.05 + 0.1 + 0.2  # backoff · 2^attempt
    assert server.paths() == ["POST /v1/echo"] * 4


def test_retries_are_bounded_and_the_error_says_so(server) -> None:
    server.script = [503] * 10
    with OpenAIClient(server.url, retries=2, backoff=0) as c, pytest.raises(EndpointError) as e:
        c.post("echo", {})
    assert len(server.requests) == 3
    msg = str(e.value)
    assert f"{server.url}/echo: HTTP 503" in msg and "model overloaded" in msg and "(after 3 attempts)" in msg
    assert "overloaded or failing" in msg and e.value.status == 503 and e.value.url == f"{server.url}/echo"
    server.script = [500]
    with OpenAIClient(server.url, retries=0) as c, pytest.raises(EndpointError, match="HTTP 500") as e:
        c.post("echo", {})
    assert "attempts" not in str(e.value) and len(server.requests) == 4


def test_retry_after_is_honoured(server) -> None:
    server.script = [(429, {"Retry-After": "0.4"})]
    with OpenAIClient(server.url, retries=1, backoff=0) as c:
        start = time.monotonic()
        c.post("echo", {})
        assert time.monotonic() - start >= 0.4
    assert len(server.requests) == 2


def test_client_errors_are_not_retried_and_say_what_to_do(fake_server) -> None:
    server = fake_server({"POST /v1/key": lambda _: (401, {"error": "no key"}), "POST /v1/junk": lambda _: b"<html>"})
    with OpenAIClient(server.url, retries=3, backoff=0) as c:
        with pytest.raises(EndpointError, match="HTTP 401.*no key.*check the API key"):
            c.post("key", {})
        with pytest.raises(EndpointError, match=f"HTTP 404.*is {server.url} the server's API root"):
            c.post("nowhere", {})
        with pytest.raises(EndpointError, match="the answer is not JSON: b'<html>'"):
            c.post("junk", {})
    assert len(server.requests) == 3


def test_a_read_timeout_is_one_error_and_not_retried(server) -> None:
    server.script = [("stall", 1.5)]
    with OpenAIClient(server.url, read_timeout=0.2, retries=3) as c:
        start = time.monotonic()
        with pytest.raises(EndpointError, match=f"{server.url}/echo: no answer within 0.2 s"):
            c.post("echo", {})
        assert time.monotonic() - start < 1.0
    assert len(server.requests) == 1


def test_a_server_that_is_down(down_url) -> None:
    with OpenAIClient(down_url, retries=2, backoff=0) as c, pytest.raises(EndpointError) as e:
        c.post("completions", {})
    msg = str(e.value)
    assert msg.startswith(f"{down_url}/completions: cannot connect") and "(after 3 attempts)" in msg
    assert f"is the server running at {down_url.removesuffix('/v1')}?" in msg


@pytest.fixture
def full_queue() -> Iterator[str]:
    """A listening socket that never accepts, its queue already full: a connection to it is never opened."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fill = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(srv.getsockname())
        except BlockingIOError:
            pass
        fill.append(s)
    time.sleep(0.1)
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/v1"
    for s in [*fill, srv]:
        s.close()


def test_the_connect_timeout(full_queue) -> None:
    with OpenAIClient(full_queue, connect_timeout=0.3, read_timeout=60, retries=1, backoff=0) as c:
        start = time.monotonic()
        with pytest.raises(EndpointError, match="cannot connect.*after 2 attempts"):
            c.get("models")
        assert 0.6 <= time.monotonic() - start < 5  # two attempts of 0.3 s each, not the 60 s read timeout


def test_wait_ready_polls_until_the_server_answers(server, down_url) -> None:
    server.script = [503]
    with OpenAIClient(server.url, retries=0) as c:
        c.wait_ready(30)
    assert server.paths() == ["GET /health"] * 2
    with OpenAIClient(down_url) as c:
        start = time.monotonic()
        with pytest.raises(EndpointError, match="cannot connect.*still failing after 0.5 s"):
            c.wait_ready(0.5)
        assert time.monotonic() - start < 5


# ---------------------------------------------------------------------------------------------- the engine
def _completions(body):
    n = body["n"]
    return {"choices": [{"index": j, "text": f"{body['prompt'][-1]}-{j}"} for j in reversed(range(n))]}


def test_the_engine_sends_one_request_per_prompt_and_orders_the_choices(fake_server, small_tiny) -> None:
    server = fake_server({"POST /v1/completions": _completions})
    tok = small_tiny[1]
    engine = EndpointEngine(OpenAIClient(server.url), "served", tok)
    params = SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9)
    texts = engine.complete(["ab", "cd", "ef"], 2, params, seed=3)
    last = tok("ab", add_special_tokens=False)["input_ids"][-1]
    assert texts[:2] == [f"{last}-0", f"{last}-1"] and len(texts) == 6
    bodies = [b for _, _, b, _ in server.requests]  # sent concurrently: in any order
    want = [tok(p, add_special_tokens=False)["input_ids"] for p in ("ab", "cd", "ef")]
    assert sorted(b["prompt"] for b in bodies) == sorted(want)
    seeds = {tuple(b["prompt"]): b["seed"] for b in bodies}
    assert [seeds[tuple(w)] for w in want] == [request_seed(3, i, 2) for i in range(3)]
    assert all(b["model"] == "served" and b["n"] == 2 and b["max_tokens"] == 7 for b in bodies)
    assert not {"top_k", "min_p", "repetition_penalty"} & set(bodies[0])  # not set: not sent
    engine.complete(["ab"], 2, SamplingParams(top_k=5, min_p=0.1, repetition_penalty=1.2), seed=0)
    assert {k: server.requests[-1][2][k] for k in ("top_k", "min_p", "repetition_penalty")} == {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
    }
    engine.close()
    with pytest.raises(ValueError, match="served model's name"):
        EndpointEngine(OpenAIClient(server.url), "", tok)
