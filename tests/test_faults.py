"""The fault battery: each bad input of issue #17 through the command line (``aha.cli.main``): a non-zero exit,
one error line naming the culprit (file and line, function, directory, --set value), and nothing the user had
overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aha.cli import main
from aha.workflows.rundir import MARKER

TINY = {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}}
TRAINING = {
    "max_steps": 1,
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "max_completion_length": 4,
    "logging_steps": 1,
    "use_cpu": True,
}


def _recipe(path: Path, **keys) -> Path:
    data = {"model": TINY, "dataset": {"task": "arithmetic", "n": 8}, "rewards": ["format"], "training": TRAINING}
    path.write_text(yaml.safe_dump({**data, **keys}))
    return path


def _tree(path: Path) -> dict[str, str | None]:
    return {str(p.relative_to(path)): p.read_text() if p.is_file() else None for p in sorted(path.rglob("*"))}


def _fails(argv: list[str], capsys) -> str:
    """Run the command; it must exit 1 and end with one error line, which is returned."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"aha {argv[0]}: error: "), err
    return err[-1].removeprefix(f"aha {argv[0]}: error: ")


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------ run directories
def test_a_project_folder_with_a_config_yaml_survives_overwrite(here, capsys) -> None:
    project = here / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("lr: 1\n")
    (project / "notes.md").write_text("ideas\n")
    (project / "src" / "main.py").write_text("print('hi')\n")
    before = _tree(project)
    recipe = _recipe(here / "r.yaml")
    for extra in ([], ["--overwrite"]):
        msg = _fails(["train", str(recipe), "--out", str(project), *extra], capsys)
        assert msg.startswith(f"--out {project} is not an aha run directory that aha created: it holds config.yaml")
    assert _tree(project) == before


def test_out_dot_overwrite_never_empties_the_working_directory(here, capsys, monkeypatch) -> None:
    recipe = _recipe(here / "r.yaml", training={**TRAINING, "max_steps": 1})
    (here / "config.yaml").write_text("mine\n")  # the old bug's trigger: a config.yaml here
    msg = _fails(["train", "r.yaml", "--out", ".", "--overwrite"], capsys)
    assert msg.startswith("--out . is not an aha run directory that aha created")
    run = here / "run"
    assert main(["train", "r.yaml", "--out", str(run), "--no-plot"]) == 0
    assert json.loads((run / MARKER).read_text())["kind"] == "an aha run directory"
    (run / "r.yaml").write_text(recipe.read_text())  # a recipe kept in the run directory, run from there
    monkeypatch.chdir(run)
    msg = _fails(["train", "r.yaml", "--out", ".", "--overwrite"], capsys)
    assert msg == "--out . is the current directory: refusing to --overwrite it; choose another --out"
    assert (run / "r.yaml").is_file() and (run / "model").is_dir()


def test_a_run_of_an_older_aha_is_refused_with_what_to_do(here, capsys) -> None:
    old = here / "runs" / "old"
    (old / "model").mkdir(parents=True)
    for name in ("config.yaml", "summary.json", "metrics.jsonl"):
        (old / name).write_text("{}\n")
    before = _tree(old)
    msg = _fails(["train", str(_recipe(here / "r.yaml")), "--out", str(old), "--overwrite"], capsys)
    assert f"no {MARKER} marker" in msg and "if it is the output of an older aha, delete it yourself first" in msg
    assert _tree(old) == before


def test_overwrite_keeps_what_aha_did_not_write_and_says_so(here, capsys) -> None:
    recipe = _recipe(here / "r.yaml")
    run = here / "run"
    assert main(["train", str(recipe), "--out", str(run), "--no-plot"]) == 0
    (run / "my-notes.txt").write_text("keep me\n")
    capsys.readouterr()
    assert main(["train", str(recipe), "--out", str(run), "--no-plot", "--overwrite"]) == 0
    assert "that aha did not write: my-notes.txt" in capsys.readouterr().err
    assert (run / "my-notes.txt").read_text() == "keep me\n" and (run / "summary.json").is_file()


def test_other_commands_share_the_guard(here, capsys) -> None:
    from aha.models.tiny import build_tiny

    build_tiny(here / "m", **TINY["tiny"])
    mine = here / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\begin{document}\n")
    stage = {"name": "g", "kind": "grpo", "dataset": {"task": "arithmetic", "n": 8}, "rewards": ["format"]}
    pipeline = here / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"model": TINY, "training": TRAINING, "stages": [stage]}))
    for argv, kind in (
        (["pipeline", str(pipeline), "--out", str(mine), "--overwrite"], "a pipeline directory"),
        (
            ["eval", "--model", str(here / "m"), "--data", "arithmetic", "--out", str(mine), "--overwrite"],
            "an aha eval directory",
        ),
        (["export", str(here / "m"), "--out", str(mine), "--overwrite"], "a model directory"),
    ):
        assert _fails(argv, capsys).startswith(f"--out {mine} is not {kind} that aha created: it holds thesis.tex")
    assert _tree(mine) == {"thesis.tex": "\\begin{document}\n"}
    data = here / "mine.jsonl"  # aha sample: a file aha did not write (no sidecar) is never replaced
    data.write_text('{"prompt": "x"}\n')
    argv = ["sample", "--model", str(here / "m"), "--data", "arithmetic", "--out", str(data), "--overwrite"]
    assert "exists but aha did not write it" in _fails(argv, capsys)
    assert data.read_text() == '{"prompt": "x"}\n'


# ------------------------------------------------------------------------------------------ messages
def test_a_bad_jsonl_line_is_named_by_file_and_line(here, capsys) -> None:
    data = here / "rows.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": "4"\n')
    recipe = _recipe(here / "r.yaml", dataset={"path": str(data)}, rewards=["correctness"])
    msg = _fails(["train", str(recipe), "--out", str(here / "run")], capsys)
    assert msg.startswith(f"{data}: line 2: not valid JSON"), msg
    assert not (here / "run").exists()


def test_a_reward_that_returns_only_nan_is_named(here, capsys) -> None:
    (here / "rw.py").write_text("def nan_reward(completions, **kw):\n    return [float('nan')] * len(completions)\n")
    recipe = _recipe(here / "r.yaml", rewards=["rw.py:nan_reward"])
    msg = _fails(["train", str(recipe), "--out", str(here / "run"), "--no-plot"], capsys)
    assert msg.startswith("reward function 'nan_reward' returned NaN or inf for all "), msg


def test_export_of_a_missing_run_is_no_such_directory(here, capsys) -> None:
    (here / "runs").mkdir()
    assert _fails(["export", "runs/does_not_exist", "--out", "o"], capsys) == "runs/does_not_exist: no such directory"


def test_a_directory_or_a_binary_file_is_not_a_recipe(here, capsys) -> None:
    (here / "runs").mkdir()
    assert _fails(["train", "runs/"], capsys).startswith("runs/ is a directory, not a recipe file")
    (here / "weights.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert _fails(["train", "weights.bin", "--dry-run"], capsys).startswith("weights.bin: not a recipe: not UTF-8")


def test_a_yaml_syntax_error_in_a_set(here, capsys) -> None:
    recipe = _recipe(here / "r.yaml")
    msg = _fails(["train", str(recipe), "--set", "dataset={task: arithmetic", "--dry-run"], capsys)
    assert msg.startswith("--set dataset: YAML syntax error in the value '{task: arithmetic': "), msg


def test_a_relative_reward_file_is_read_next_to_the_recipe(here, capsys, monkeypatch) -> None:
    project = here / "project"
    project.mkdir()
    (project / "rw.py").write_text("def fn(completions, **kw):\n    return [1.0] * len(completions)\n")
    recipe = _recipe(project / "r.yaml", rewards=["rw.py:fn"])
    assert main(["train", str(recipe), "--dry-run"]) == 0  # the working directory has no rw.py
    _recipe(project / "r.yaml", rewards=["gone.py:fn"])
    msg = _fails(["train", str(recipe), "--dry-run"], capsys)
    assert f"no file '{project / 'gone.py'}' (a relative path is read from the recipe's directory {project})" in msg


def test_a_missing_model_path_and_an_unknown_reward(here, capsys) -> None:
    recipe = _recipe(here / "r.yaml")
    msg = _fails(["train", str(recipe), "--set", "model=some/missing/path", "--dry-run"], capsys)
    assert msg == "some/missing/path: no such directory (and not a Hub id)"
    msg = _fails(["train", str(recipe), "--set", "rewards=[x]", "--dry-run"], capsys)
    assert msg.startswith("unknown reward 'x'; built-in rewards are: ") and "correctness" in msg
    msg = _fails(["eval", "--model", "some/missing/path", "--data", "arithmetic"], capsys)
    assert msg == "some/missing/path: no such directory (and not a Hub id)"
