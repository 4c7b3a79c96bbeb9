"""VLLMRollout(mode="server") against a fake ``vllm serve`` (tests/conftest.py; no vLLM needed): what each
request carries, the answers cut at EOS, the completion-engine contract (seeds), weight sync through the dev-mode
endpoints, waiting for the server, and its errors. The real engine and server are tested in tests_vllm/."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from aha.rollout.engine import request_seed
from aha.rollout.sampler import SamplingParams
from aha.rollout.server import EndpointError
from aha.rollout.vllm import VLLMRollout, named_weights

AFTER = 7  # a token the fake server puts after EOS: must be cut off


class FakeVLLM:
    """/v1/completions answers each prompt with three tokens (last prompt token + 1, + 2, + 3), EOS and a token
    after it, with log-probs -0.1, -0.2, ...; `models` is what /v1/models lists."""

    def __init__(self, eos: int) -> None:
        self.eos = eos
        self.models = ["tiny"]

    def routes(self) -> dict:
        return {
            "GET /health": lambda _: {},
            "GET /v1/models": lambda _: {"data": [{"id": m} for m in self.models]},
            "POST /v1/completions": self.completions,
            "POST /collective_rpc": lambda _: {},
            "POST /reset_prefix_cache": lambda _: {},
        }

    def completions(self, body: dict) -> dict:
        last = body["prompt"][-1]
        ids = [last + 1, last + 2, last + 3, self.eos, AFTER]
        lps = [-0.1 * (k + 1) for k in range(len(ids))]
        return {"choices": [{"index": 0, "text": "", "token_ids": ids, "logprobs": {"token_logprobs": lps}}]}


@pytest.fixture
def vllm_server(fake_server, small_tiny):
    fake = FakeVLLM(small_tiny[1].eos_token_id)
    return fake, fake_server(fake.routes())


def _rollout(server, tok, **kwargs) -> VLLMRollout:
    return VLLMRollout("tiny", tok, mode="server", server_base_url=server.root, **kwargs)


def test_generate_sends_token_ids_and_cuts_at_eos(vllm_server, small_tiny) -> None:
    fake, server = vllm_server
    tok = small_tiny[1]
    with _rollout(server, tok) as rollout:
        params = SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=5, min_p=0.05)
        ids, lps = rollout.generate([[10, 11], [20]], params, row_seeds=[3, 4])
    assert ids == [[12, 13, 14, fake.eos], [21, 22, 23, fake.eos]]  # EOS kept, nothing after it
    assert lps == [pytest.approx([-0.1, -0.2, -0.3, -0.4])] * 2
    assert server.paths()[:2] == ["GET /health", "GET /v1/models"]
    bodies = sorted((b for m, p, b, _ in server.requests if p == "/v1/completions"), key=lambda b: b["prompt"])
    assert [(b["prompt"], b["seed"]) for b in bodies] == [([10, 11], 3), ([20], 4)]
    for b in bodies:
        assert b["model"] == "tiny" and b["return_token_ids"] is True and b["logprobs"] == 0
        assert (b["max_tokens"], b["temperature"], b["top_p"], b["top_k"], b["min_p"]) == (9, 0.7, 0.9, 5, 0.05)
        assert b["stop_token_ids"] == [fake.eos]


def test_complete_is_a_completion_engine_seeded_per_sample(vllm_server, small_tiny) -> None:
    fake, server = vllm_server
    tok = small_tiny[1]
    prompts = [[{"role": "user", "content": "1+2"}], "plain text"]
    with _rollout(server, tok) as rollout:
        texts = rollout.complete(prompts, 2, SamplingParams(max_new_tokens=4), seed=5)
    bodies = [b for _, p, b, _ in server.requests if p == "/v1/completions"]
    rendered = [
        tok(tok.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
    ]
    rendered.append(tok("plain text", add_special_tokens=False)["input_ids"])
    want = {(tuple(rendered[i]), request_seed(5, i, 2) + j) for i in range(2) for j in range(2)}
    assert {(tuple(b["prompt"]), b["seed"]) for b in bodies} == want
    for i, text in enumerate(texts):
        last = rendered[i // 2][-1]
        assert text == tok.decode([last + 1, last + 2, last + 3], skip_special_tokens=True)


def test_sync_weights_writes_safetensors_and_asks_the_server_to_reload(vllm_server, small_tiny, tmp_path) -> None:
    _, server = vllm_server
    model, tok = small_tiny
    with _rollout(server, tok, weights_dir=tmp_path / "w") as rollout:
        rollout.sync_weights(model)
    assert server.paths()[-2:] == ["POST /collective_rpc", "POST /reset_prefix_cache"]
    rpc = server.requests[-2][2]
    assert rpc == {"method": "reload_weights", "kwargs": {"weights_path": str((tmp_path / "w").resolve())}}
    saved = load_file(str(tmp_path / "w" / "model.safetensors"))
    want = dict(named_weights(model))
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)


def test_sync_weights_without_dev_mode_says_how_to_start_the_server(vllm_server, small_tiny) -> None:
    fake, server = vllm_server
    del server.routes["POST /collective_rpc"]  # a server started without VLLM_SERVER_DEV_MODE=1
    model, tok = small_tiny
    with _rollout(server, tok) as rollout, pytest.raises(EndpointError, match="VLLM_SERVER_DEV_MODE=1") as e:
        rollout.sync_weights(model)
    assert e.value.status == 404 and "/collective_rpc: HTTP 404" in str(e.value)


def test_it_waits_for_a_loading_server_and_names_a_missing_one(vllm_server, small_tiny, down_url) -> None:
    _, server = vllm_server
    tok = small_tiny[1]
    server.script = [503]  # still loading
    _rollout(server, tok).close()
    assert server.paths()[:3] == ["GET /health", "GET /health", "GET /v1/models"]
    with pytest.raises(EndpointError, match="cannot connect.*still failing after 0.5 s"):
        VLLMRollout("tiny", tok, mode="server", server_base_url=down_url, server_timeout=0.5)


def test_the_served_model_and_bad_answers(vllm_server, small_tiny) -> None:
    fake, server = vllm_server
    tok = small_tiny[1]
    fake.models = ["a", "b"]
    with pytest.raises(ValueError, match=r"serves \['a', 'b'\]; pass one of them"):
        _rollout(server, tok)
    rollout = VLLMRollout("b", tok, mode="server", server_base_url=server.url)  # /v1 or not: the same server
    assert rollout.served_model == "b"
    server.routes["POST /v1/completions"] = lambda _: {"choices": [{"text": "no ids"}]}
    with pytest.raises(EndpointError, match="no choices\\[0\\].token_ids / logprobs.token_logprobs"):
        rollout.generate([[1]], SamplingParams())
    rollout.close()
    with pytest.raises(RuntimeError, match="closed"):
        rollout.generate([[1]], SamplingParams())


def test_bad_settings(small_tiny) -> None:
    tok = small_tiny[1]
    with pytest.raises(ValueError, match="needs server_base_url"):
        VLLMRollout("x", tok, mode="server")
    with pytest.raises(ValueError, match=r"server_base_url must be an http\(s\):// URL"):
        VLLMRollout("x", tok, mode="server", server_base_url="localhost:8000")
    with pytest.raises(ValueError, match="takes no engine options \\(dtype\\)"):
        VLLMRollout("x", tok, mode="server", server_base_url="http://127.0.0.1:9", dtype="float32")


def test_an_option_of_the_other_mode_is_refused(small_tiny):
    tok = small_tiny[1]
    with pytest.raises(ValueError, match=r"mode='server' does not use gpu_memory_utilization, max_model_len"):
        VLLMRollout(
            "x", tok, mode="server", server_base_url="http://127.0.0.1:9", max_model_len=64, gpu_memory_utilization=0.5
        )
    with pytest.raises(ValueError, match=r"mode='colocate' does not use api_key, server_timeout"):
        VLLMRollout("x", tok, mode="colocate", server_timeout=3, api_key="k")
