"""Where a command writes (``--out``): the kinds of output, and the one guard every command passes before it
writes, so that nothing a user had is lost.

A directory output is provably aha's: when a command creates it (or adopts an empty one) it writes the marker
file ``.aha-run`` (:data:`MARKER`, JSON: the aha version, the kind of output, the top-level entries aha wrote and
those it found there and kept), and it adds what it wrote to that list when it finishes (:func:`record_output`,
called also when it fails). Each command declares its :class:`OutputKind`: a directory (with the patterns of the
top-level entries it writes, so that a run killed before its record still counts as aha's) or a file with its
suffix and sidecars (``aha sample``'s ``x.jsonl`` and ``x.pass_rates.jsonl``). The guard behaves the same for
every kind:

- a file where a directory goes, or a directory where a file goes, is refused;
- `sources`, what the command reads (the model being exported, the data), are never deleted: ``--out`` may be
  none of them and no directory above one;
- a non-empty directory without the marker (a project folder, or a run of an older aha) is refused, with or
  without ``--overwrite``, naming what is in it; so is one holding another kind of aha output;
- an existing output is refused without ``--overwrite``, except that a kind which `resumes` (a pipeline)
  continues it;
- ``--overwrite`` never clears the current directory, a directory above it, the home directory or ``/``;
- with ``--overwrite``, :func:`prepare_output` deletes what aha wrote there (the entries the marker lists and
  those matching the kind's patterns) and keeps, and names, everything else; a file output is replaced only when
  its sidecars are next to it (aha writes them together). :func:`check_output` makes the same checks and touches
  nothing, for a command that checks before its long work.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

MARKER = ".aha-run"  # in every directory aha created as an output: what it wrote there


@dataclass(frozen=True)
class OutputKind:
    """What a command writes at ``--out``: a directory whose top-level entries match `writes` (glob patterns), or
    (with `suffix`) a file, with its `sidecars` next to it (``x.jsonl`` with sidecar ``.pass_rates.jsonl`` →
    ``x.pass_rates.jsonl``)."""

    name: str  # as the errors say it: "an aha run directory"; also the kind recorded in the marker
    writes: tuple[str, ...] = ()  # a directory: patterns of the top-level entries the command writes
    suffix: str = ""  # a file: its suffix (".jsonl"); "" for a directory
    sidecars: tuple[str, ...] = ()  # a file: the files written next to it, as <stem><sidecar>
    resumes: bool = False  # an existing output of this kind is continued without --overwrite

    def __post_init__(self) -> None:
        if bool(self.writes) == bool(self.suffix):
            raise ValueError(f"output kind {self.name!r}: give a directory's entries or a file's suffix, not both")
        if self.sidecars and not self.suffix:
            raise ValueError(f"output kind {self.name!r}: sidecars are for a file output")
        if self.resumes and self.suffix:
            raise ValueError(f"output kind {self.name!r}: only a directory output resumes")

    def paths(self, out: Path) -> list[Path]:
        """What the output consists of: the directory, or the file and its sidecars."""
        return [out, *(out.with_name(out.stem + s) for s in self.sidecars)]

    def owns(self, name: str) -> bool:
        """Is `name` a top-level entry this kind writes?"""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.writes)


# aha train / sft (aha.workflows.run, the trainers' checkpoints, aha.workflows.report's plots)
RUN_DIR = OutputKind(
    "an aha run directory",
    writes=(
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "model",
        "merged",
        "base",
        "eval",
        "plots",
        "report.md",
        "checkpoint-*",
        ".checkpoint-*.tmp",
    ),
)


# ------------------------------------------------------------------------------------------ the marker
def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of directory `path`, or None when it has none; an unreadable marker is a ValueError."""
    file = path / MARKER
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise ValueError("not a mapping with a kind")
        for key in ("written", "kept"):
            if not isinstance(data.setdefault(key, []), list):
                raise ValueError(f"{key} is not a list")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            f"--out {path}: its {MARKER} marker is unreadable ({e}); delete the directory yourself"
        ) from None
    return data


def _write_marker(path: Path, kind: OutputKind, written: Iterable[str], kept: Iterable[str]) -> None:
    data = {"aha": version("aha"), "kind": kind.name, "written": sorted(set(written)), "kept": sorted(set(kept))}
    _dump(path, data)


def _dump(path: Path, data: dict[str, Any]) -> None:
    tmp = path / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path / MARKER)


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name not in (MARKER, f"{MARKER}.tmp"))


def record_output(out: str | Path) -> None:
    """Add the top-level entries of output directory `out` to its marker's list of what aha wrote (all but those
    it kept when it created the directory). A directory without the marker (a resumed run of an older aha) is left
    as it is."""
    path = Path(out)
    marker = read_marker(path) if path.is_dir() else None
    if marker is None:
        return
    kept = set(marker["kept"])
    written = set(marker["written"]) | {e for e in _entries(path) if e not in kept}
    _dump(path, {**marker, "aha": version("aha"), "written": sorted(written)})


def _listing(path: Path, limit: int = 6) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(path.iterdir())]
    more = f", … ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ------------------------------------------------------------------------------------------ the guard
def check_output(out: str | Path, kind: OutputKind, overwrite: bool, *, sources: Iterable[str | Path] = ()) -> Path:
    """The checks of :func:`prepare_output` (see the module docstring), touching nothing; returns `out`."""
    path = Path(out)
    if kind.suffix:
        _keep_sources(path, kind, sources)
        _check_file(path, kind, overwrite)
        return path
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a directory")
    _keep_sources(path, kind, sources)
    if not (path.is_dir() and any(path.iterdir())):
        return path
    marker = read_marker(path)
    if marker is None:
        raise ValueError(
            f"--out {path} is not {kind.name} that aha created: it holds {_listing(path)} and no {MARKER} marker; "
            "refusing to write into it or delete anything in it, even with --overwrite: choose another --out (if it "
            "is the output of an older aha, delete it yourself first)"
        )
    if marker["kind"] != kind.name:
        raise ValueError(f"--out {path} is {marker['kind']}, not {kind.name}; choose another --out")
    if not _owned(path, kind, marker):
        return path  # aha's, with nothing of aha's in it (a run that died at once, or only the user's files)
    if kind.resumes and not overwrite:
        return path  # continued
    if not overwrite:
        raise ValueError(
            f"--out {path} already holds files ({kind.name} written by aha); choose another directory or pass "
            "--overwrite to replace what aha wrote there"
        )
    _refuse_protected(path)
    return path


def prepare_output(out: str | Path, kind: OutputKind, overwrite: bool, *, sources: Iterable[str | Path] = ()) -> Path:
    """Check `out` (:func:`check_output`), delete the old output when `overwrite` (only what aha wrote: the rest is
    kept and named on the console), and create the directory with its marker (the file's parent for a file
    output); returns `out`. A resumed output is left as it is."""
    path = check_output(out, kind, overwrite, sources=sources)
    if kind.suffix:
        if overwrite:
            for p in kind.paths(path):
                p.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    kept: list[str] = []
    if overwrite and path.is_dir() and any(path.iterdir()):
        kept = _clear(path, kind)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).is_file():
        _write_marker(path, kind, [], kept)
    return path


def _clear(path: Path, kind: OutputKind) -> list[str]:
    """Delete the entries of marked directory `path` that aha wrote; rewrite the marker; returns those kept."""
    marker = read_marker(path)
    assert marker is not None  # check_output refused an unmarked directory
    owned = _owned(path, kind, marker)
    kept = [name for name in _entries(path) if name not in owned]
    for name in owned:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    _write_marker(path, kind, [], kept)
    if kept:
        from aha.console import console

        console.print(
            f"--overwrite: kept {len(kept)} entr{'y' if len(kept) == 1 else 'ies'} of {path} that aha did not "
            f"write: {', '.join(kept)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return kept


def _owned(path: Path, kind: OutputKind, marker: dict[str, Any]) -> list[str]:
    """The entries of marked directory `path` that aha wrote: those its marker lists and those matching the kind's
    patterns (a run killed before it recorded them), except those it found there and kept."""
    written, kept = set(marker["written"]), set(marker["kept"])
    return [n for n in _entries(path) if n not in kept and (n in written or kind.owns(n))]


def _refuse_protected(path: Path) -> None:
    """--overwrite never clears the current directory, one above it, the home directory or the root."""
    p, cwd = path.resolve(), Path.cwd().resolve()
    what = (
        "the current directory"
        if p == cwd
        else "a directory above the current one"
        if p in cwd.parents
        else "your home directory"
        if p == Path.home().resolve()
        else "the root directory"
        if p == Path(p.anchor)
        else None
    )
    if what is not None:
        raise ValueError(f"--out {path} is {what}: refusing to --overwrite it; choose another --out")


def _check_file(path: Path, kind: OutputKind, overwrite: bool) -> None:
    if path.suffix != kind.suffix:
        raise ValueError(f"--out {path}: the output is a {kind.suffix} file")
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; the output is a {kind.suffix} file")
    missing = [p for p in kind.paths(path)[1:] if not p.exists()]
    if path.exists() and missing:
        raise ValueError(
            f"--out {path} exists but aha did not write it (aha writes {missing[0].name} next to it); refusing to "
            "replace it, even with --overwrite: choose another file"
        )
    for p in kind.paths(path):
        if p.exists() and not overwrite:
            raise ValueError(f"--out: {p} already exists; choose another file or pass --overwrite")
        if p.is_dir():
            raise ValueError(f"--out: {p} is a directory; refusing to delete it even with --overwrite")


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
