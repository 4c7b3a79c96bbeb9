"""The one ``--out`` guard, for every kind of output: what it refuses (and that a refusal touches nothing), what
``--overwrite`` deletes, resuming, and the sources it never deletes."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

from aha.workflows.rundir import MARKER, RUN_DIR, OutputKind, check_output, prepare_output, record_output

PIPELINE = OutputKind("a pipeline directory", writes=("pipeline.yaml", "[0-9]*-*"), resumes=True)
SAMPLES = OutputKind("a JSON-lines file", suffix=".jsonl", sidecars=(".pass_rates.jsonl",))


def _tree(path: Path) -> dict[str, str | None]:
    """Every file (with its text) and directory (None) under `path`."""
    return {str(p.relative_to(path)): p.read_text() if p.is_file() else None for p in sorted(path.rglob("*"))}


def _dir(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _marker(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


def _own(path: Path, kind: OutputKind = RUN_DIR, **files: str) -> Path:
    """A directory as aha leaves it: created by the guard, files written, recorded."""
    prepare_output(path, kind, False)
    _dir(path, **files)
    record_output(path)
    return path


def test_a_missing_or_empty_directory_is_created_with_the_marker(tmp_path) -> None:
    assert prepare_output(tmp_path / "a" / "b", RUN_DIR, False) == tmp_path / "a" / "b"
    marker = _marker(tmp_path / "a" / "b")
    assert marker == {"aha": version("aha"), "kind": RUN_DIR.name, "written": [], "kept": []}
    _dir(tmp_path / "empty")
    assert prepare_output(tmp_path / "empty", RUN_DIR, False).is_dir() and _marker(tmp_path / "empty")["written"] == []


def test_record_lists_what_aha_wrote(tmp_path) -> None:
    run = _own(tmp_path / "run", **{"config.yaml": "x", "custom.log": "aha wrote it too"})
    assert _marker(run)["written"] == ["config.yaml", "custom.log"]
    record_output(tmp_path / "elsewhere")  # no directory (or no marker): nothing happens
    assert not (tmp_path / "elsewhere").exists()


def test_a_run_directory_needs_overwrite_and_then_loses_only_what_aha_wrote(tmp_path, capsys) -> None:
    run = _own(tmp_path / "run", **{"config.yaml": "x", "custom.log": "log"})
    (run / "model").mkdir()  # a killed run wrote model/ but never recorded it: the kind's pattern claims it
    (run / "checkpoint-3").mkdir()
    _dir(run, **{"notes.txt": "mine"})  # the user's, added afterwards
    before = _tree(run)
    for guard in (check_output, prepare_output):
        with pytest.raises(ValueError, match="already holds files .* or pass --overwrite"):
            guard(run, RUN_DIR, False)
    assert _tree(run) == before
    assert check_output(run, RUN_DIR, True) == run and _tree(run) == before
    capsys.readouterr()
    prepare_output(run, RUN_DIR, True)
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "notes.txt"]
    assert f"kept 1 entry of {run} that aha did not write: notes.txt" in capsys.readouterr().err
    assert _marker(run)["kept"] == ["notes.txt"] and _marker(run)["written"] == []
    assert prepare_output(run, RUN_DIR, False) == run  # nothing of aha's left: written into without --overwrite
    _dir(run, **{"config.yaml": "y"})  # the next run writes; what it kept stays the user's
    record_output(run)
    assert _marker(run)["written"] == ["config.yaml"]
    prepare_output(run, RUN_DIR, True)
    assert _tree(run).keys() == {MARKER, "notes.txt"}


def test_a_project_folder_is_never_touched(tmp_path) -> None:
    """The bug: a folder holding a config.yaml was taken for a run and --overwrite deleted it whole."""
    project = _dir(tmp_path / "project", **{"config.yaml": "lr: 1", "notes.md": "ideas"})
    _dir(project / "src", **{"main.py": "print()"})
    before = _tree(project)
    for overwrite in (False, True):
        with pytest.raises(ValueError) as e:
            prepare_output(project, RUN_DIR, overwrite)
        msg = str(e.value)
        assert f"--out {project} is not an aha run directory that aha created" in msg
        assert "config.yaml, notes.md, src/" in msg and f"no {MARKER} marker" in msg
        assert "even with --overwrite" in msg and "older aha, delete it yourself" in msg
    assert _tree(project) == before


def test_another_kind_of_aha_output_is_refused(tmp_path) -> None:
    run = _own(tmp_path / "run", **{"config.yaml": "x"})
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="is an aha run directory, not a pipeline directory; choose another"):
            prepare_output(run, PIPELINE, overwrite)
    assert _tree(run).keys() == {MARKER, "config.yaml"}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MARKER).write_text("not json")
    with pytest.raises(ValueError, match="marker is unreadable"):
        check_output(tmp_path / "bad", RUN_DIR, True)


@pytest.mark.parametrize("where", ["cwd", "parent", "home"])
def test_overwrite_never_clears_the_working_directory_its_parents_or_home(tmp_path, monkeypatch, where) -> None:
    """The bug: `--out . --overwrite` emptied the working directory (the recipe with it)."""
    run = _own(tmp_path / "run", **{"config.yaml": "x"})
    (run / "recipe.yaml").write_text("model: tiny")
    inner = _dir(run / "sub")
    monkeypatch.chdir(run if where == "cwd" else inner)
    monkeypatch.setenv("HOME", str(run if where == "home" else tmp_path / "nohome"))
    if where == "home":
        monkeypatch.chdir(tmp_path)
    out = Path(".") if where == "cwd" else Path("..") if where == "parent" else run
    what = {"cwd": "the current directory", "parent": "a directory above the current one", "home": "your home"}
    with pytest.raises(ValueError, match=f"is {what[where]}.*: refusing to --overwrite it"):
        prepare_output(out, RUN_DIR, True)
    assert (run / "recipe.yaml").is_file() and (run / "config.yaml").is_file()


def test_a_symlink_aha_wrote_is_unlinked_not_followed(tmp_path) -> None:
    target = _dir(tmp_path / "precious", **{"a.txt": "keep"})
    run = _own(tmp_path / "run")
    (run / "model").symlink_to(target, target_is_directory=True)
    prepare_output(run, RUN_DIR, True)
    assert not (run / "model").exists() and _tree(target) == {"a.txt": "keep"}


def test_a_file_where_a_directory_goes_and_the_reverse(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        prepare_output(tmp_path / "f", RUN_DIR, True)
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(ValueError, match="is a directory; the output is a .jsonl file"):
        prepare_output(tmp_path / "d.jsonl", SAMPLES, True)
    (tmp_path / "e.jsonl").write_text("")
    (tmp_path / "e.pass_rates.jsonl").mkdir()
    with pytest.raises(ValueError, match="e.pass_rates.jsonl is a directory; refusing to delete it"):
        prepare_output(tmp_path / "e.jsonl", SAMPLES, True)
    with pytest.raises(ValueError, match="the output is a .jsonl file"):
        check_output(tmp_path / "out.json", SAMPLES, False)
    assert (tmp_path / "f").read_text() == "x" and (tmp_path / "e.jsonl").exists()


def test_a_pipeline_directory_is_resumed_without_overwrite_and_replaced_with_it(tmp_path) -> None:
    run = _own(tmp_path / "p", PIPELINE, **{"pipeline.yaml": "stages: []", "1-sft.done": "{}"})
    before = _tree(run)
    assert prepare_output(run, PIPELINE, False) == run
    assert _tree(run) == before  # continued as it is
    prepare_output(run, PIPELINE, True)
    assert [p.name for p in run.iterdir()] == [MARKER]
    old = _dir(tmp_path / "old", **{"pipeline.yaml": "stages: []"})  # an older aha's: no marker
    with pytest.raises(ValueError, match="no .aha-run marker"):
        prepare_output(old, PIPELINE, False)


def test_a_file_and_its_sidecar(tmp_path) -> None:
    out = tmp_path / "sub" / "s.jsonl"
    side = tmp_path / "sub" / "s.pass_rates.jsonl"
    assert prepare_output(out, SAMPLES, False) == out and out.parent.is_dir() and not out.exists()
    for existing in ([side], [out, side]):  # what aha leaves: the sidecar (written first), or both
        for p in existing:
            p.write_text("old\n")
        with pytest.raises(ValueError, match=f"--out: {existing[0]} already exists; choose another file or pass"):
            prepare_output(out, SAMPLES, False)
        assert existing[0].read_text() == "old\n"
        prepare_output(out, SAMPLES, True)  # deleted, with the other one
        assert not out.exists() and not side.exists()
    out.write_text("a user's data\n")  # no sidecar: not aha's
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="exists but aha did not write it .*s.pass_rates.jsonl.*even with"):
            prepare_output(out, SAMPLES, overwrite)
    assert out.read_text() == "a user's data\n"


def test_sources_are_never_deleted(tmp_path) -> None:
    model = _dir(tmp_path / "run" / "model", **{"config.json": "{}"})
    kind = OutputKind("a model directory", writes=("config.json",))
    for out in (model, tmp_path / "run", tmp_path):  # the source itself, or a directory above it
        with pytest.raises(ValueError, match=f"would overwrite {model}, which this command reads"):
            prepare_output(out, kind, True, sources=[model])
    assert _tree(model) == {"config.json": "{}"}
    prepare_output(tmp_path / "elsewhere", kind, True, sources=[model, "user/hub-id", "arithmetic"])
    data = tmp_path / "s.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ValueError, match="which this command reads"):  # --data s.jsonl --out s.jsonl
        prepare_output(data, SAMPLES, True, sources=[str(data)])
    side = tmp_path / "t.pass_rates.jsonl"
    side.write_text("{}\n")
    with pytest.raises(ValueError, match="which this command reads"):  # ... or the data is the sidecar
        prepare_output(tmp_path / "t.jsonl", SAMPLES, True, sources=[side])
    assert data.read_text() == side.read_text() == "{}\n"


def test_a_kind_is_a_directory_or_a_file() -> None:
    with pytest.raises(ValueError, match="not both"):
        OutputKind("x", writes=("a",), suffix=".jsonl")
    with pytest.raises(ValueError, match="not both"):
        OutputKind("x")
    with pytest.raises(ValueError, match="sidecars are for a file"):
        OutputKind("x", writes=("a",), sidecars=(".b",))
    with pytest.raises(ValueError, match="only a directory output resumes"):
        OutputKind("x", suffix=".jsonl", resumes=True)
