"""Run directories: what makes a directory an aha run, and creating one without losing what a user had."""

from __future__ import annotations

import shutil
from pathlib import Path

from aha.models.loading import RUN_MARKERS


def prepare_run_dir(out: str | Path, overwrite: bool) -> Path:
    """Create `out`; refuse a non-empty one unless `overwrite` and it holds an aha run."""
    path = check_run_dir(out, overwrite)
    if path.exists() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_run_dir(out: str | Path, overwrite: bool) -> Path:
    """The checks of ``prepare_run_dir``, touching nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {path} already holds files; choose another directory or pass --overwrite")
        if not any((path / m).exists() for m in RUN_MARKERS):
            raise ValueError(
                f"--out {path} is not an aha run directory (no {' / '.join(RUN_MARKERS)}); "
                "refusing to delete it even with --overwrite"
            )
    return path
