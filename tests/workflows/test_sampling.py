"""``aha sample``: exactly the verified completions are kept, pass rates match a hand count, dedup, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import aha.rollout.engine
from aha.cli import main
from aha.rollout.engine import request_seed
from aha.tasks import get_task

N = 4


def _fake_generate(model, tok, prompts, params, *, batch_size=128, seed=0, backend="fast", dtype=None):
    """Deterministic: for the question a+b, the first (a+b) % 5 of its N completions are correct (two distinct
    texts, so a third or fourth correct one duplicates an earlier one), the others answer a+b+1."""
    texts = []
    for i, p in enumerate(prompts):
        a, b = map(int, p[-1]["content"].split("\n")[0].split("+"))  # the question, then the task's instruction
        s, j = a + b, i % N
        ok = j < s % 5
        texts.append(
            f"<think>t{j % 2}</think><answer>{s}</answer>" if ok else f"<think>x</think><answer>{s + 1}</answer>"
        )
    return texts, [5] * len(texts), [False] * len(texts)


def _expected(limit: int, lo: float = 0.0, hi: float = 1.0) -> tuple[list[float], int]:
    """Hand count: pass rate per prompt, and kept lines (distinct correct texts: min(c, 2), in-range prompts)."""
    rows = get_task("arithmetic").rows("train", limit, 0)
    rates, kept = [], 0
    for r in rows:
        c = int(r["answer"]) % 5
        rates.append(c / N)
        if lo <= c / N <= hi:
            kept += min(c, 2)
    return rates, kept


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("judge", [[], ["--reward", "correctness", "format", "--min-reward", "2"]])
def test_keeps_exactly_the_verified_completions(tmp_path, model_dir, monkeypatch, judge) -> None:
    monkeypatch.setattr(aha.rollout.engine, "generate_texts", _fake_generate)
    out = tmp_path / "s.jsonl"
    args = ["sample", "--model", model_dir, "--data", "arithmetic", "--n", str(N), "--limit", "20", "--out", str(out)]
    assert main(args + judge) == 0
    rates, kept = _expected(20)
    side = _read(tmp_path / "s.pass_rates.jsonl")
    assert [r["pass_rate"] for r in side] == rates
    assert [r["accepted"] for r in side] == [round(x * N) for x in rates]
    lines = _read(out)
    assert len(lines) == kept == sum(r["kept"] for r in side)
    task = get_task("arithmetic")
    for line in lines:
        assert line["completion"][0]["role"] == "assistant" and line["prompt"][0]["role"] == "user"
        assert task.check(line["completion"][0]["content"], line) and "<think>" in line["completion"][0]["content"]
        assert line["pass_rate"] == int(line["answer"]) % 5 / N
    pairs = [(json.dumps(x["prompt"]), x["completion"][0]["content"]) for x in lines]
    assert len(set(pairs)) == len(pairs)  # deduplicated per prompt


def test_pass_rate_window_max_per_prompt_and_keep_all(tmp_path, model_dir, monkeypatch) -> None:
    monkeypatch.setattr(aha.rollout.engine, "generate_texts", _fake_generate)
    out = tmp_path / "w.jsonl"
    base = ["sample", "--model", model_dir, "--data", "arithmetic", "--n", str(N), "--limit", "20"]
    assert main([*base, "--out", str(out), "--min-pass-rate", "0.25", "--max-pass-rate", "0.75"]) == 0
    rates, kept = _expected(20, 0.25, 0.75)
    assert len(_read(out)) == kept and all(0.25 <= x["pass_rate"] <= 0.75 for x in _read(out))
    assert [r["in_range"] for r in _read(tmp_path / "w.pass_rates.jsonl")] == [0.25 <= x <= 0.75 for x in rates]

    assert main([*base, "--out", str(out), "--max-per-prompt", "1", "--overwrite"]) == 0
    assert len(_read(out)) == sum(x > 0 for x in rates)

    assert main([*base, "--out", str(out), "--keep", "all", "--overwrite"]) == 0
    lines = _read(out)
    # distinct texts per prompt: min(c, 2) correct ones, plus one wrong text when some are wrong
    assert len(lines) == sum(min(round(x * N), 2) + (x < 1) for x in rates)
    assert sum(x["correct"] for x in lines) == _expected(20)[1]


def test_refuses_to_overwrite_and_bad_options(tmp_path, model_dir, capsys) -> None:
    out = tmp_path / "s.jsonl"
    out.write_text("keep me\n")
    args = ["sample", "--model", model_dir, "--data", "arithmetic", "--out", str(out)]
    for extra in ([], ["--overwrite"]):  # no pass-rates sidecar next to it: not an aha sample output
        assert main([*args, *extra]) == 1
        assert "exists but aha did not write it" in capsys.readouterr().err and out.read_text() == "keep me\n"
    (tmp_path / "s.pass_rates.jsonl").write_text("{}\n")  # as aha leaves it
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert main([*args, "--overwrite", "--min-pass-rate", "0.8", "--max-pass-rate", "0.2"]) == 1
    assert "pass rates" in capsys.readouterr().err


def test_real_run_on_a_tiny_model(tmp_path, model_dir) -> None:
    """The real sampler: every line's `correct` is the task's verdict, and the pass rates add up."""
    out = tmp_path / "r.jsonl"
    args = ["sample", "--model", model_dir, "--data", "arithmetic:digits=1", "--n", "3", "--limit", "4"]
    assert main([*args, "--max-new-tokens", "6", "--keep", "all", "--out", str(out)]) == 0
    side, lines = _read(tmp_path / "r.pass_rates.jsonl"), _read(out)
    assert len(side) == 4 and sum(r["kept"] for r in side) == len(lines) >= 4
    task = get_task("arithmetic", digits=1)
    for line in lines:
        assert line["correct"] == task.check(line["completion"][0]["content"], line)
    for r in side:
        mine = [x for x in lines if x["prompt"] == r["prompt"]]
        assert all(x["pass_rate"] == r["pass_rate"] == r["accepted"] / 3 for x in mine)
        assert sum(x["correct"] for x in mine) <= r["accepted"]


def _ctrl_c_on_call(monkeypatch, k: int, inner) -> list[int]:
    """Make generate_texts send this process a SIGINT during its `k`-th call; returns the calls' seeds."""
    import signal

    seeds: list[int] = []

    def generate(*args, **kwargs):
        seeds.append(kwargs["seed"])
        if len(seeds) == k:
            signal.raise_signal(signal.SIGINT)  # recorded; the chunk in flight finishes
        return inner(*args, **kwargs)

    monkeypatch.setattr(aha.rollout.engine, "generate_texts", generate)
    return seeds


def test_ctrl_c_keeps_the_accepted_chunks_and_resume_finishes_the_same_file(tmp_path, model_dir, monkeypatch, capsys):
    import aha.workflows.sampling

    monkeypatch.setattr(aha.workflows.sampling, "CHUNK", 5)  # 20 prompts: 4 chunks
    base = ["sample", "--model", model_dir, "--data", "arithmetic", "--n", str(N), "--limit", "20", "--batch-size", "4"]
    _ctrl_c_on_call(monkeypatch, 0, _fake_generate)
    assert main([*base, "--out", str(tmp_path / "ref.jsonl")]) == 0
    out = tmp_path / "s.jsonl"
    seeds = _ctrl_c_on_call(monkeypatch, 2, _fake_generate)
    capsys.readouterr()
    assert main([*base, "--out", str(out)]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    partial = tmp_path / ".s.jsonl.partial"
    assert last == (
        f"aha sample: stopped by SIGINT after 10 of 20 prompts; saved {partial}; resume with: "
        f"aha sample --model {model_dir} --data arithmetic --n {N} --limit 20 --batch-size 4 --out {out} --resume"
    )
    assert seeds == [0, request_seed(0, 5, N)] and not out.exists()
    rates, kept = _expected(20)
    assert len(_read(partial)) == sum(min(round(r * N), 2) for r in rates[:10])  # the first two chunks' lines
    assert main([*base, "--out", str(out)]) == 1  # neither resumed nor overwritten: refused
    assert "an interrupted run left its progress" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--resume", "--n", "2"]) == 1  # other settings: refused
    assert "other settings" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--resume"]) == 0
    assert out.read_text() == (tmp_path / "ref.jsonl").read_text() and len(_read(out)) == kept
    assert (tmp_path / "s.pass_rates.jsonl").read_text() == (tmp_path / "ref.pass_rates.jsonl").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".s.")) == []
    assert main([*base, "--out", str(out), "--resume"]) == 1  # nothing left to resume
    assert "no interrupted run" in capsys.readouterr().err


def test_resumed_real_sampling_draws_as_an_uninterrupted_run(tmp_path, model_dir, monkeypatch):
    """The real sampler: each chunk's draws depend on where it starts, not on where a run stopped."""
    import aha.workflows.sampling

    monkeypatch.setattr(aha.workflows.sampling, "CHUNK", 2)
    base = ["sample", "--model", model_dir, "--data", "arithmetic:digits=1", "--n", "2", "--limit", "6"]
    base += ["--max-new-tokens", "6", "--keep", "all", "--batch-size", "2"]
    real = aha.rollout.engine.generate_texts
    assert main([*base, "--out", str(tmp_path / "ref.jsonl")]) == 0
    _ctrl_c_on_call(monkeypatch, 1, real)
    assert main([*base, "--out", str(tmp_path / "s.jsonl")]) == 130
    monkeypatch.setattr(aha.rollout.engine, "generate_texts", real)
    assert main([*base, "--out", str(tmp_path / "s.jsonl"), "--resume"]) == 0
    assert (tmp_path / "s.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()


def test_reward_scores_refuse_a_reward_that_is_nan_for_the_whole_batch():
    """aha sample --reward: a reward giving NaN/inf for every completion is broken, refused by name; NaN for some
    completions (or None) adds nothing to theirs, as in training."""
    import math

    from aha.workflows.sampling import reward_scores

    rows = [{"prompt": "1+1", "answer": "2"}, {"prompt": "2+2", "answer": "4"}]

    def broken(completions, **kw):
        return [math.nan] * len(completions)

    def partial(completions, **kw):
        return [1.0, math.inf]

    with pytest.raises(ValueError, match="reward function 'broken' returned NaN or inf for all 2 samples"):
        reward_scores([broken], rows, ["a", "b"])
    assert reward_scores([partial, {"name": "length", "ideal_length": 1}], rows, ["a", "bb"]) == [1.0, -1.0]
