"""The one ``--out`` guard, for every kind of output: what it refuses (and that a refusal touches nothing), what
``--overwrite`` deletes, resuming, and the sources it never deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from aha.workflows.rundir import RUN_DIR, OutputKind, check_output, prepare_output

PIPELINE = OutputKind("a pipeline directory", markers=("pipeline.yaml",), resumes=True)
SAMPLES = OutputKind("a JSON-lines file", suffix=".jsonl", sidecars=(".pass_rates.jsonl",))


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def _dir(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_a_missing_or_empty_directory_is_created(tmp_path) -> None:
    assert prepare_output(tmp_path / "a" / "b", RUN_DIR, False) == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    _dir(tmp_path / "empty")
    assert prepare_output(tmp_path / "empty", RUN_DIR, False).is_dir()


def test_a_run_directory_needs_overwrite_and_is_then_replaced_whole(tmp_path) -> None:
    run = _dir(tmp_path / "run", **{"config.yaml": "x", "notes.txt": "mine"})
    (run / "model").mkdir()
    for guard in (check_output, prepare_output):
        with pytest.raises(ValueError, match="already holds files; choose another directory or pass --overwrite"):
            guard(run, RUN_DIR, False)
    assert _tree(run) == {"config.yaml": "x", "notes.txt": "mine"}
    assert check_output(run, RUN_DIR, True) == run and _tree(run) == {"config.yaml": "x", "notes.txt": "mine"}
    prepare_output(run, RUN_DIR, True)
    assert run.is_dir() and not any(run.iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_of_another_kind_is_refused_even_with_overwrite(tmp_path, overwrite) -> None:
    other = _dir(tmp_path / "photos", **{"cat.jpg": "meow"})
    for kind in (RUN_DIR, PIPELINE):
        with pytest.raises(ValueError) as e:
            prepare_output(other, kind, overwrite)
        if overwrite or kind.resumes:
            assert f"is not {kind.name} (no {' / '.join(kind.markers)})" in str(e.value)
            assert "refusing to delete it even with --overwrite" in str(e.value)
        else:  # first: the directory is not empty
            assert "already holds files" in str(e.value)
        assert str(other) in str(e.value)
    assert _tree(other) == {"cat.jpg": "meow"}


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
    run = _dir(tmp_path / "p", **{"pipeline.yaml": "stages: []", "1-sft.done": "{}"})
    assert prepare_output(run, PIPELINE, False) == run
    assert _tree(run) == {"pipeline.yaml": "stages: []", "1-sft.done": "{}"}  # continued as it is
    prepare_output(run, PIPELINE, True)
    assert run.is_dir() and not any(run.iterdir())


def test_a_file_and_its_sidecar(tmp_path) -> None:
    out = tmp_path / "sub" / "s.jsonl"
    assert prepare_output(out, SAMPLES, False) == out and out.parent.is_dir() and not out.exists()
    for existing in (out, tmp_path / "sub" / "s.pass_rates.jsonl"):  # either one alone is an existing output
        existing.write_text("keep me\n")
        with pytest.raises(ValueError, match=f"--out: {existing} already exists; choose another file or pass"):
            prepare_output(out, SAMPLES, False)
        assert existing.read_text() == "keep me\n"
        prepare_output(out, SAMPLES, True)  # deleted, with the other one
        assert not out.exists() and not (tmp_path / "sub" / "s.pass_rates.jsonl").exists()


def test_sources_are_never_deleted(tmp_path) -> None:
    model = _dir(tmp_path / "run" / "model", **{"config.json": "{}"})
    kind = OutputKind("a model directory", markers=("config.json",))
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
        OutputKind("x", markers=("a",), suffix=".jsonl")
    with pytest.raises(ValueError, match="not both"):
        OutputKind("x")
    with pytest.raises(ValueError, match="sidecars are for a file"):
        OutputKind("x", markers=("a",), sidecars=(".b",))
    with pytest.raises(ValueError, match="only a directory output resumes"):
        OutputKind("x", suffix=".jsonl", resumes=True)
