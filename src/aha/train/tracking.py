"""Experiment trackers behind ``report_to`` (transformers' and TRL's names and meanings): one small class per
tracker behind the :class:`Tracker` protocol, and :class:`Trackers`, the fan-out the training loop logs through.

``OUTPUT_DIR/metrics.jsonl`` (:class:`aha.train.metrics.MetricsLogger`) is always written; these go beside it, each
through its own library:

- ``"tensorboard"``: event files in ``logging_dir`` (default TENSORBOARD_LOGGING_DIR, or ``OUTPUT_DIR/runs``, in
  ``runs/RUN_NAME`` when ``run_name`` is set, which TensorBoard shows as the run's name) via
  ``torch.utils.tensorboard`` (or tensorboardX); the run's settings and the completions tables as text;
- ``"trackio"``: trackio's local store (TRACKIO_DIR, default ``~/.cache/huggingface/trackio``; ``trackio show``),
  project ``project``, run ``run_name``; completions as a ``trackio.Table``;
- ``"wandb"``: project WANDB_PROJECT or ``project``, run ``run_name``, files under ``logging_dir`` (default
  OUTPUT_DIR; WANDB_DIR wins when set); ``WANDB_MODE=offline`` works without an account; completions as a
  ``wandb.Table``;
- ``"mlflow"``: MLFLOW_TRACKING_URI, or a local SQLite store ``LOGGING_DIR/mlflow.db`` (artifacts in
  ``LOGGING_DIR/mlartifacts``; ``mlflow ui --backend-store-uri sqlite:///...`` shows it); experiment
  MLFLOW_EXPERIMENT_NAME or ``project``, run ``run_name``; the settings as params, completions with ``log_table``.

``"all"`` is every one of them that is installed, ``"none"`` (or ``[]``) none; ``"jsonl"`` names the file that is
always written. A tracker named but not installed is refused when the config is made, with the pip command.

Metric names are transformers': ``train/<name>`` (``eval/...`` rows keep theirs), at the optimiser step. On a
resumed run TensorBoard drops the events logged after the checkpoint (``purge_step``); the other trackers start a
new run (wandb continues one when WANDB_RUN_ID and WANDB_RESUME are set, as wandb itself reads them).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# tracker -> (the modules that provide it, the pip command that installs it)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "trackio": (("trackio",), "pip install trackio"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),  # mlflow-skinny works too, with sqlalchemy and alembic
}
ALWAYS = "jsonl"  # OUTPUT_DIR/metrics.jsonl, written whatever report_to says


def installed(name: str) -> bool:
    """Is the library of tracker `name` importable here?"""
    for module in TRACKERS[name][0]:
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):
            pass
    return False


def resolve_report_to(value: str | list[str] | None, owner: str) -> list[str]:
    """``report_to`` as transformers reads it ("all", "none", a name or a list of names), checked: the trackers to
    open (and "jsonl", the file always written, when named). `owner` names the config in the errors."""
    names = [] if value is None else [value] if isinstance(value, str) else list(value)
    if names in (["all"], ["none"]):
        return [t for t in TRACKERS if installed(t)] if names == ["all"] else []
    known = [*TRACKERS, ALWAYS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"{owner}.report_to: {', '.join(map(repr, unknown))} is not a tracker aha reports to; use "
            f"{', '.join(map(repr, TRACKERS))}, 'all' (those installed) or 'none' (metrics.jsonl only)"
        )
    missing = [n for n in names if n != ALWAYS and not installed(n)]
    if missing:
        how = "; ".join(f"{n}: {TRACKERS[n][1]}" for n in missing)
        raise ValueError(
            f"{owner}.report_to: {', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not "
            f"installed ({how}, or pip install 'aha[tracking]' for all of them); metrics always go to "
            "OUTPUT_DIR/metrics.jsonl, so report_to='none' needs nothing"
        )
    return list(dict.fromkeys(names))


@dataclass
class RunInfo:
    """What a tracker needs to open its run."""

    output_dir: Path
    project: str = "huggingface"
    run_name: str | None = None
    logging_dir: Path | None = None  # None: each tracker's default (see the module docstring)
    config: dict[str, Any] = field(default_factory=dict)  # the run's settings
    start_step: int = 0  # > 0: resumed from the checkpoint of that step


class Tracker(Protocol):
    """One experiment tracker's run: opened by the constructor, closed by :meth:`close`."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...
    def close(self) -> None: ...


def _markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


class TensorBoardTracker:
    """TensorBoard event files (``SummaryWriter``): scalars, the settings and completions as text."""

    def __init__(self, run: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package; tensorboardX is the other writer
            from tensorboardX import SummaryWriter
        env = os.environ.get("TENSORBOARD_LOGGING_DIR")
        self.log_dir = Path(run.logging_dir or env or run.output_dir / "runs" / (run.run_name or ""))
        # resumed: events past the checkpoint (logged by the run that died) are dropped, as they will be again
        self.writer = SummaryWriter(
            log_dir=str(self.log_dir), purge_step=run.start_step + 1 if run.start_step else None
        )
        if run.config:
            self.writer.add_text("args", "```\n" + json.dumps(run.config, indent=1, default=str) + "\n```")

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.writer.add_text(name, _markdown_table(columns, rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrackioTracker:
    """A trackio run (local store unless trackio is told otherwise, e.g. TRACKIO_SPACE_ID)."""

    def __init__(self, run: RunInfo) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=run.project, name=run.run_name, config=run.config or None)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({name: self.trackio.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class WandbTracker:
    """A Weights & Biases run (``WANDB_MODE=offline`` keeps it on disk, no account needed)."""

    def __init__(self, run: RunInfo) -> None:
        import wandb

        self.wandb = wandb
        where = os.environ.get("WANDB_DIR") or run.logging_dir or run.output_dir
        Path(where).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or run.project,
                name=run.run_name,
                dir=str(where),
                config=run.config,
            )
        except Exception as e:  # not logged in, no network: one clear line
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(
                f"report_to='wandb': wandb.init failed ({first}); run `wandb login`, or set WANDB_MODE=offline to "
                "keep the run on disk (upload it later with `wandb sync`)"
            ) from e

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run): metrics, the settings as params, tables."""

    def __init__(self, run: RunInfo) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:  # MLflow's own local default (a SQLite store; its file store is retired), in the run's folder
            where = Path(run.logging_dir or run.output_dir).absolute()
            where.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{where / 'mlflow.db'}", (where / "mlartifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.project
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name, artifact_location=artifacts)
        self.run_id = self.client.create_run(experiment, run_name=run.run_name).info.run_id
        self.tracking_uri = uri
        if run.config:
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in run.config.items()]
            for s in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(self.run_id, params=params[s : s + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{name}.json")  # rows appended at each call

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


OPEN: dict[str, type] = {
    "tensorboard": TensorBoardTracker,
    "trackio": TrackioTracker,
    "wandb": WandbTracker,
    "mlflow": MLflowTracker,
}


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row as the trackers take it: numbers only (NaN and None dropped), named ``train/<name>`` as
    transformers does (``eval/...`` and ``eval_...`` keep their names); ``phase`` and ``step`` are the run and
    the x-axis, not metrics."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in ("phase", "step") or isinstance(v, str) or v is None:
            continue
        if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            continue
        out[k if k.startswith(("eval/", "eval_", "train/")) else f"train/{k}"] = float(v)
    return out


class Trackers:
    """The trackers of one run, by name (``report_to`` resolved): opened with :meth:`start`, each row logged to
    every one of them, closed with :meth:`close`."""

    def __init__(self, names: list[str], run: RunInfo) -> None:
        unknown = [n for n in names if n not in OPEN]
        if unknown:
            raise ValueError(f"Trackers: unknown tracker(s) {unknown}; known: {', '.join(OPEN)}")
        self.names, self.run = list(names), run
        self.open: list[Tracker] = []

    @classmethod
    def of(cls, args: Any, config: dict[str, Any] | None = None) -> Trackers | None:
        """The trackers `args` (a GRPOConfig or SFTConfig: ``report_to``, ``output_dir``, ``project``,
        ``run_name``, ``logging_dir``) asks for, or None when it asks for none."""
        names = [n for n in resolve_report_to(getattr(args, "report_to", None), type(args).__name__) if n != ALWAYS]
        if not names:
            return None
        logging_dir = getattr(args, "logging_dir", None)
        run = RunInfo(
            output_dir=Path(args.output_dir),
            project=getattr(args, "project", None) or "huggingface",
            run_name=getattr(args, "run_name", None),
            logging_dir=Path(logging_dir) if logging_dir else None,
            config=dict(config or {}),
        )
        return cls(names, run)

    def start(self, step: int = 0) -> None:
        """Open every tracker's run (`step` > 0: resumed from that step's checkpoint)."""
        self.run.start_step = step
        try:
            for name in self.names:
                self.open.append(OPEN[name](self.run))
        except BaseException:
            self.close()
            raise

    def log(self, row: dict[str, Any], step: int) -> None:
        metrics = scalars(row)
        if metrics:
            for t in self.open:
                t.log(metrics, step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        for t in self.open:
            t.log_table(name, columns, rows, step)

    def close(self) -> None:
        opened, self.open = self.open, []
        for t in opened:
            t.close()
