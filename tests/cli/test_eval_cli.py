import json

import pytest

from aha.cli import main
from aha.models.tiny import build_tiny

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
FAST = ["--max-new-tokens", "6", "--limit", "3"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny(root / "a", seed=0, **SIZES)
    build_tiny(root / "b", seed=1, **SIZES)
    return root


def test_eval_cli_with_compare(models, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(models / "a"), "--data", "arithmetic", "--n", "2", "--k", "1,2", *FAST]
    assert main([*args, "--out", str(out), "--compare", str(models / "b")]) == 0
    printed = capsys.readouterr().out
    assert "pass@2" in printed and "maj@2" in printed and "A better" in printed
    comparison = json.loads((out / "comparison.json").read_text())
    assert sum(comparison["pass@1"].values()) == 3 and len(comparison["questions"]) == 3
    assert json.loads((out / "compare" / "summary.json").read_text())["model"] == str(models / "b")
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3


def test_eval_cli_on_a_file_default_k(models, tmp_path, capsys):
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    assert main(["eval", "--model", str(models / "a"), "--data", str(data), "--n", "4", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "pass@4" in printed and "pass@8" not in printed and "--out" in printed  # k defaults to 1,4 <= n


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "1,16"], "--k 16 is larger than --n 8"),
        (["--data", "BAD"], "no answer column in"),
        (["--data", "arithmetc"], "not a built-in task (did you mean arithmetic?)"),
        (["--model", "MISSING"], "missing: no such directory"),
        (["--out", "FULL"], "is not an aha eval directory that aha created"),
    ],
)
def test_eval_cli_errors(models, tmp_path, capsys, extra, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "label": 1}) + "\n")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    subst = {"BAD": str(bad), "MISSING": str(tmp_path / "missing"), "FULL": str(full)}
    extra = [subst.get(x, x) for x in extra]
    args = {"--model": str(models / "a"), "--data": "arithmetic"}
    for i in range(0, len(extra), 2):
        args[extra[i]] = extra[i + 1]
    argv = ["eval", *[x for kv in args.items() for x in kv], *FAST]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aha eval: error:") and message in err[-1]
    if "no answer column" in message:
        assert (
            "bad.jsonl" in err[-1]
            and "expected one of answer," in err[-1]
            and "its columns: question, label" in err[-1]
        )


def test_eval_cli_a_tool_using_task_brings_its_tools(models, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(models / "a"), "--data", "calculator", "--n", "1", "--k", "1", *FAST]
    assert main([*args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tools"] == ["calculator"] and "tool_use_rate" in summary and "greedy_tool_calls" in summary
    assert "completions calling a tool" in capsys.readouterr().out
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert record["greedy"]["conversation"][0]["role"] == "assistant"
    assert main(["eval", "--model", str(models / "a"), "--data", "arithmetic", "--tool", "nosuch", *FAST]) == 1
    assert "unknown tool 'nosuch'" in capsys.readouterr().err
