import json

import pytest

import aha.workflows.evaluation as run_mod
from aha.models.tiny import build_tiny
from aha.workflows.evaluation import EvalConfig, load_eval_data, run_eval

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny(path, **SIZES)
    return path


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_run_eval_on_task_writes_samples_and_summary(tiny_dir, tmp_path):
    cfg = EvalConfig(n=4, ks=[1, 2, 4], max_new_tokens=6, limit=3, batch_size=5)
    result = run_eval(str(tiny_dir), "arithmetic", cfg, out=tmp_path / "out")
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(len(x["samples"]) == 4 for x in lines)
    for x in lines:
        assert {"completion", "extracted", "correct", "format_ok", "length", "truncated"} <= set(x["samples"][0])
        assert x["prompt"][0]["role"] == "user" and x["answer"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result["summary"]))
    assert summary["answer_format"] == "task" and summary["n_questions"] == 3
    flat = [s for x in lines for s in x["samples"]]
    assert summary["pass@1"] == pytest.approx(sum(s["correct"] for s in flat) / len(flat))
    assert summary["max_length"] <= 6 and summary["truncated"] == pytest.approx(
        sum(s["truncated"] for s in flat) / len(flat)
    )
    for key in ("greedy_accuracy", "pass@2", "pass@4", "maj@4", "format_rate", "mean_length", "greedy_truncated"):
        assert key in summary


def test_metrics_end_to_end_with_scripted_completions(tiny_dir, tmp_path, monkeypatch):
    """Completions scripted per question: known pass@k, maj@k, format rate and truncation."""
    data = _write_jsonl(
        tmp_path / "gsm.jsonl",
        [{"question": "q1", "answer": "work\n#### 7"}, {"question": "q2", "answer": "work\n#### 1,000"}],
    )
    script = {
        "q1": ["<think>a</think>7", "<think>b</think>8", "<think>c</think>8", "<think>d</think>7"],
        "q2": ["<think>x</think>The answer is 1,000.", "9", "<think>never ends", "<answer>1000</answer>"],
    }
    calls = {"greedy": 0, "sampled": {}}

    def fake_generate(model, tok, prompts, params, *, batch_size, seed):
        texts = []
        for p in prompts:
            q = p[-1]["content"]
            if params.greedy:
                texts.append(script[q][0])
            else:
                i = calls["sampled"].get(q, 0)
                calls["sampled"][q] = i + 1
                texts.append(script[q][i])
        return texts, [len(t) for t in texts], ["never ends" in t for t in texts]

    monkeypatch.setattr(run_mod, "generate_texts", fake_generate)
    cfg = EvalConfig(n=4, ks=[1, 2, 4], batch_size=3)
    s = run_eval(str(tiny_dir), str(data), cfg)["summary"]
    assert s["answer_format"] == "gsm8k" and s["greedy_accuracy"] == 1.0
    # q1: c=2 of 4; q2: c=2 of 4 ("1,000" and "<answer>1000")
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["pass@2"] == pytest.approx(1 - 1 / 6)
    assert s["pass@4"] == 1.0
    # maj@2: q1 "7" vs "8" tie -> "7" (first) correct; q2 "1000" vs "9" tie -> "1000" correct
    # maj@4: q1 7:2, 8:2 -> "7" first, correct; q2 1000:2, 9:1 -> correct
    assert s["maj@2"] == 1.0 and s["maj@4"] == 1.0 and s["maj@1"] == 1.0
    assert s["format_rate"] == pytest.approx(5 / 8)  # q1: all 4 are thought-then-answer; q2: only the first
    assert s["truncated"] == pytest.approx(1 / 8)


def test_load_eval_data_formats(tmp_path):
    rows, v = load_eval_data(str(_write_jsonl(tmp_path / "a.jsonl", [{"question": "2+2?", "answer": "#### 4"}])))
    assert v.format == "gsm8k" and rows[0]["answer"] == "4" and rows[0]["prompt"][0]["content"] == "2+2?"
    (tmp_path / "m.csv").write_text('problem,solution\n"Half of 1?","It is $\\boxed{\\frac{1}{2}}$"\n')
    rows, v = load_eval_data(str(tmp_path / "m.csv"))
    assert v.format == "math" and rows[0]["answer"] == r"\frac{1}{2}"
    (tmp_path / "list.json").write_text(json.dumps([{"prompt": "x", "answer": "1"}, {"prompt": "y", "answer": "2"}]))
    rows, _ = load_eval_data(str(tmp_path / "list.json"), limit=1)
    assert len(rows) == 1
    rows, v = load_eval_data("arithmetic:digits=1", limit=5, seed=2)
    assert len(rows) == 5 and v.format == "task" and v.task.digits == 1


def test_load_eval_data_errors(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "label": "3", "id": 1}])
    with pytest.raises(ValueError, match="no answer column.*columns found: question, label, id"):
        load_eval_data(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_eval_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="not a built-in task"):
        load_eval_data("arithmetc")


def test_run_eval_errors(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="--k 8 is larger than --n 4"):
        run_eval(str(tiny_dir), "arithmetic", EvalConfig(n=4, ks=[1, 8]))
    with pytest.raises(FileNotFoundError, match="model path .* does not exist"):
        run_eval(str(tmp_path / "nope"), "arithmetic", EvalConfig(n=1, ks=[1]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="already holds files"):
        run_eval(str(tiny_dir), "arithmetic", EvalConfig(n=1, ks=[1]), out=out)
    with pytest.raises(ValueError, match="not an aha eval directory"):  # --overwrite deletes only eval output
        run_eval(str(tiny_dir), "arithmetic", EvalConfig(n=1, ks=[1]), out=out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep"
    cfg = EvalConfig(n=1, ks=[1], limit=2, max_new_tokens=3)
    run_eval(str(tiny_dir), "arithmetic", cfg, out=tmp_path / "ev")
    (tmp_path / "ev" / "stale.txt").write_text("old")
    run_eval(str(tiny_dir), "arithmetic", cfg, out=tmp_path / "ev", overwrite=True)  # an eval directory: replaced
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["samples.jsonl", "summary.json"]
