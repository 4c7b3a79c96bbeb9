import json

from aha.cli import main


def test_tasks_list(capsys):
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("arithmetic", "countdown", "wordproblems", "summarize"):
        assert name in out
    for param in ("count=4", "max_value=100", "ideal_length=50", "eval_fraction=0.1"):
        assert param in out


def test_tasks_show(capsys):
    assert main(["tasks", "show", "wordproblems", "--set", "max_steps=1", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    for split in ("sft", "train", "eval"):
        assert f"split {split}" in out
    assert out.count("####") == 3 and "<think>" in out
    assert main(["tasks", "show", "countdown", "--set", "count=3"]) == 0
    body = capsys.readouterr().out.split("split eval")[1].split("\n", 1)[1]
    assert len(json.loads(body)["numbers"]) == 3


def test_tasks_errors(capsys):
    assert main(["tasks", "show", "countdwn"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aha tasks: error: unknown task 'countdwn' (did you mean countdown?)")
    assert main(["tasks", "show", "countdown", "--set", "count=9"]) == 1
    assert "count must be" in capsys.readouterr().err
    assert main(["tasks", "show", "countdown", "--set", "count"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
