"""Where a command writes (``--out``): the kinds of output, and the one guard every command passes before it
writes, so that nothing a user had is lost.

Each command declares its :class:`OutputKind`: a directory recognised by its marker files (a run directory:
``config.yaml`` / ``summary.json`` / ``metrics.jsonl``; a model directory: ``config.json`` /
``adapter_config.json``; ...) or a file with its suffix and sidecars (``aha sample``'s ``x.jsonl`` and
``x.pass_rates.jsonl``). The guard behaves the same for every kind:

- a file where a directory goes, or a directory where a file goes, is refused;
- `sources`, what the command reads (the model being exported, the data), are never deleted: ``--out`` may be
  none of them and no directory above one;
- an existing output is refused without ``--overwrite``, except that a kind which `resumes` (a pipeline)
  continues it;
- a non-empty directory that is not this kind of output (none of its markers) is refused even with
  ``--overwrite``: the guard deletes only what a command of this kind wrote;
- with ``--overwrite`` the old output is deleted whole (the directory, or the file and its sidecars) by
  :func:`prepare_output`, which a command calls when it is ready to write; :func:`check_output` makes the same
  checks and touches nothing, for a command that checks before its long work.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aha.models.loading import RUN_MARKERS


@dataclass(frozen=True)
class OutputKind:
    """What a command writes at ``--out``: a directory holding one of `markers`, or (with `suffix`) a file, with
    its `sidecars` next to it (``x.jsonl`` with sidecar ``.pass_rates.jsonl`` → ``x.pass_rates.jsonl``)."""

    name: str  # as the errors say it: "an aha run directory"
    markers: tuple[str, ...] = ()  # a directory: one of these files in it makes it this kind of output
    suffix: str = ""  # a file: its suffix (".jsonl"); "" for a directory
    sidecars: tuple[str, ...] = ()  # a file: the files written next to it, as <stem><sidecar>
    resumes: bool = False  # an existing output of this kind is continued without --overwrite

    def __post_init__(self) -> None:
        if bool(self.markers) == bool(self.suffix):
            raise ValueError(f"output kind {self.name!r}: give a directory's markers or a file's suffix, not both")
        if self.sidecars and not self.suffix:
            raise ValueError(f"output kind {self.name!r}: sidecars are for a file output")
        if self.resumes and self.suffix:
            raise ValueError(f"output kind {self.name!r}: only a directory output resumes")

    def paths(self, out: Path) -> list[Path]:
        """What the output consists of: the directory, or the file and its sidecars."""
        return [out, *(out.with_name(out.stem + s) for s in self.sidecars)]


RUN_DIR = OutputKind("an aha run directory", markers=RUN_MARKERS)  # aha train / sft / demo


def check_output(out: str | Path, kind: OutputKind, overwrite: bool, *, sources: Iterable[str | Path] = ()) -> Path:
    """The checks of :func:`prepare_output` (see the module docstring), touching nothing; returns `out`."""
    path = Path(out)
    if kind.suffix:
        if path.suffix != kind.suffix:
            raise ValueError(f"--out {path}: the output is a {kind.suffix} file")
        if path.is_dir():
            raise ValueError(f"--out {path} is a directory; the output is a {kind.suffix} file")
    elif path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a directory")
    _keep_sources(path, kind, sources)
    if kind.suffix:
        for p in kind.paths(path):
            if p.exists() and not overwrite:
                raise ValueError(f"--out: {p} already exists; choose another file or pass --overwrite")
            if p.is_dir():
                raise ValueError(f"--out: {p} is a directory; refusing to delete it even with --overwrite")
        return path
    if not (path.is_dir() and any(path.iterdir())):
        return path
    ours = any((path / m).exists() for m in kind.markers)
    if ours and kind.resumes and not overwrite:
        return path  # continued
    if not overwrite and not kind.resumes:
        raise ValueError(f"--out {path} already holds files; choose another directory or pass --overwrite")
    if not ours:
        raise ValueError(
            f"--out {path} holds files but is not {kind.name} (no {' / '.join(kind.markers)}); refusing to delete "
            "it even with --overwrite: choose another directory"
        )
    return path


def prepare_output(out: str | Path, kind: OutputKind, overwrite: bool, *, sources: Iterable[str | Path] = ()) -> Path:
    """Check `out` (:func:`check_output`), delete the old output when `overwrite`, and create the directory (the
    file's parent for a file output); returns `out`. A resumed output is left as it is."""
    path = check_output(out, kind, overwrite, sources=sources)
    if kind.suffix:
        if overwrite:
            for p in kind.paths(path):
                p.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    if overwrite and path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _keep_sources(path: Path, kind: OutputKind, sources: Iterable[str | Path]) -> None:
    """Refuse an output that is a source, or a directory holding one (sources that are not local paths, such
    as Hub ids and task names, cannot be hit)."""
    mine = [p.resolve() for p in kind.paths(path)]
    for source in sources:
        src = Path(source).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if any(p == src or p in src.parents for p in mine):
            raise ValueError(f"--out {path} would overwrite {source}, which this command reads; choose another --out")
