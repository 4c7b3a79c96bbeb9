"""`aha eval --backend vllm`: the same questions graded from an in-process vLLM engine; its greedy completions are
the fast backend's (vLLM's greedy equals the model's, see test_colocate)."""

from __future__ import annotations

import json

from aha.cli import main


def _records(path) -> list[dict]:
    return [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]


def test_eval_backend_vllm_grades_what_the_engine_samples(model_dir, tmp_path) -> None:
    args = ["--data", "arithmetic", "--limit", "6", "--n", "2", "--max-new-tokens", "16", "--dtype", "float32"]
    assert main(["eval", "--model", str(model_dir), *args, "--out", str(tmp_path / "fast")]) == 0
    assert main(["eval", "--model", str(model_dir), *args, "--backend", "vllm", "--out", str(tmp_path / "v")]) == 0
    fast, vllm = _records(tmp_path / "fast"), _records(tmp_path / "v")
    assert [r["greedy"]["completion"] for r in vllm] == [r["greedy"]["completion"] for r in fast]
    assert [r["greedy"]["length"] for r in vllm] == [r["greedy"]["length"] for r in fast]
    assert all(len(r["samples"]) == 2 for r in vllm)
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["n_questions"] == 6
