import json

import pytest

from aha.eval.evaluate import EvalConfig
from aha.models.tiny import build_tiny
from aha.workflows.evaluation import run_eval

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
    cfg = EvalConfig(n=4, ks=[1, 2, 4], max_new_tokens=6, batch_size=5)
    result = run_eval(str(tiny_dir), "arithmetic", cfg, limit=3, out=tmp_path / "out")
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


def test_run_eval_on_a_file_detects_columns_and_format(tiny_dir, tmp_path):
    data = _write_jsonl(
        tmp_path / "gsm.jsonl",
        [{"question": "1+1?", "answer": "so\n#### 2"}, {"question": "2+2?", "answer": "#### 4"}, {"question": "x"}],
    )
    cfg = EvalConfig(n=1, ks=[1], max_new_tokens=4)
    result = run_eval(str(tiny_dir), str(data), cfg, limit=2, out=tmp_path / "out")
    assert result["summary"]["answer_format"] == "gsm8k" and result["summary"]["n_questions"] == 2
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [x["answer"] for x in lines] == ["2", "4"] and lines[0]["prompt"] == [{"role": "user", "content": "1+1?"}]
    math = run_eval(str(tiny_dir), str(data), cfg, limit=1, answer_format="math")["summary"]
    assert math["answer_format"] == "math" and math["n_questions"] == 1


def test_run_eval_errors(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="--k 8 is larger than --n 4"):
        run_eval(str(tiny_dir), "arithmetic", EvalConfig(n=4, ks=[1, 8]))
    with pytest.raises(FileNotFoundError, match="nope: no such directory"):
        run_eval(str(tmp_path / "nope"), "arithmetic", EvalConfig(n=1, ks=[1]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    for overwrite in (False, True):  # not made by aha: never written into, even with --overwrite
        with pytest.raises(ValueError, match="is not an aha eval directory that aha created: it holds notes.txt"):
            run_eval(str(tiny_dir), "arithmetic", EvalConfig(n=1, ks=[1]), out=out, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "keep"
    cfg = EvalConfig(n=1, ks=[1], max_new_tokens=3)
    with pytest.raises(ValueError, match="--limit must be at least 1"):
        run_eval(str(tiny_dir), "arithmetic", cfg, limit=0)
    with pytest.raises(ValueError, match="not a built-in task"):
        run_eval(str(tiny_dir), "arithmetc", cfg)
    run_eval(str(tiny_dir), "arithmetic", cfg, limit=2, out=tmp_path / "ev")
    (tmp_path / "ev" / "mine.txt").write_text("the user's")
    (tmp_path / "ev" / "summary.json").write_text("stale")
    run_eval(str(tiny_dir), "arithmetic", cfg, limit=2, out=tmp_path / "ev", overwrite=True)  # what aha wrote: replaced
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        ".aha-run",
        "mine.txt",
        "samples.jsonl",
        "summary.json",
    ]
    assert (tmp_path / "ev" / "mine.txt").read_text() == "the user's"
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n_questions"] == 2
