"""report_to's trackers (aha.train.tracking): each one's run read back with the tracker's own reader."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from aha import GRPOConfig, GRPOTrainer
from aha.tasks import get_task
from aha.train import tracking
from aha.train.sft import SFTConfig, SFTTrainer
from aha.train.tracking import RunInfo, Trackers, resolve_report_to, scalars

ROWS = [  # what the loop logs: phase, step, epoch and the metrics of the window
    {"phase": "grpo", "step": 1, "epoch": 0.5, "loss": 0.25, "reward": 1.0, "rewards/f/mean": 1.0, "kl": float("nan")},
    {"phase": "grpo", "step": 2, "epoch": 1.0, "loss": 0.125, "reward": 2.0, "rewards/f/mean": 2.0, "kl": None},
]
COLUMNS = ["step", "prompt", "completion", "reward"]
TABLE = [[2, "1+1=", "2", 1.0], [2, "2+2=", "5 | 4\nok", 0.0]]


def run_trackers(names, tmp_path, rows=ROWS, start_step=0, **info):
    run = RunInfo(output_dir=tmp_path, config={"learning_rate": 0.001, "num_generations": 4}, **info)
    trackers = Trackers(names, run)
    trackers.start(start_step)
    try:
        for row in rows:
            trackers.log(row, row["step"])
        trackers.log_table("completions", COLUMNS, TABLE, rows[-1]["step"])
    finally:
        trackers.close()
    return trackers


def need(name):
    if not tracking.installed(name):
        pytest.skip(f"{name} is not installed")


# ---------------------------------------------------------------------------------------------- report_to
def test_report_to_as_transformers_reads_it(monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda name: name in ("tensorboard", "mlflow"))
    assert resolve_report_to("all", "X") == ["tensorboard", "mlflow"]
    assert resolve_report_to(["all"], "X") == ["tensorboard", "mlflow"]
    assert resolve_report_to("none", "X") == resolve_report_to(["none"], "X") == resolve_report_to([], "X") == []
    assert resolve_report_to("tensorboard", "X") == ["tensorboard"]
    assert resolve_report_to(["jsonl", "mlflow", "mlflow"], "X") == ["jsonl", "mlflow"]
    assert GRPOConfig(report_to="all").report_to == ["tensorboard", "mlflow"]
    assert SFTConfig(report_to="tensorboard").report_to == ["tensorboard"]


def test_a_tracker_not_installed_names_it_and_the_pip_command(monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda name: name != "wandb")
    for make, owner in ((GRPOConfig, "GRPOConfig"), (SFTConfig, "SFTConfig")):
        with pytest.raises(
            ValueError, match=rf"{owner}\.report_to: 'wandb' is not installed \(wandb: pip install wandb"
        ):
            make(report_to=["tensorboard", "wandb"])


def test_an_unknown_tracker_is_refused():
    with pytest.raises(ValueError, match=r"GRPOConfig\.report_to: 'comet_ml' is not a tracker.*'tensorboard'"):
        GRPOConfig(report_to="comet_ml")


def test_rows_become_transformers_metric_names():
    row = {**ROWS[0], "eval/accuracy": 0.5, "note": "text", "ok": True}
    assert scalars(row) == {
        "train/epoch": 0.5,
        "train/loss": 0.25,
        "train/reward": 1.0,
        "train/rewards/f/mean": 1.0,
        "eval/accuracy": 0.5,
        "train/ok": 1.0,
    }


# ---------------------------------------------------------------------------------------------- TensorBoard
def tensorboard_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_text(acc, tag):
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


def test_tensorboard_writes_scalars_settings_and_completions(tmp_path):
    need("tensorboard")
    run_trackers(["tensorboard"], tmp_path)
    acc = tensorboard_events(tmp_path / "runs")  # the default logging_dir
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.25), (2, 0.125)]
    assert [e.value for e in acc.Scalars("train/rewards/f/mean")] == [1.0, 2.0]
    assert "train/kl" not in acc.Tags()["scalars"]  # NaN and None are not points
    assert '"num_generations": 4' in tb_text(acc, "args/text_summary")[0][1]
    [(step, table)] = tb_text(acc, "completions/text_summary")
    assert step == 2 and "| 2 | 2+2= | 5 \\| 4<br>ok | 0.0 |" in table


def test_tensorboard_honours_logging_dir_and_drops_the_dead_runs_steps_on_resume(tmp_path):
    need("tensorboard")
    logs = tmp_path / "tb"
    run_trackers(["tensorboard"], tmp_path, logging_dir=logs)
    # resumed from the checkpoint of step 1: step 2 is logged again, with another value
    again = [{**ROWS[1], "loss": 0.5}]
    run_trackers(["tensorboard"], tmp_path, rows=again, start_step=1, logging_dir=logs)
    acc = tensorboard_events(logs)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.25), (2, 0.5)]
    assert not (tmp_path / "runs").exists()
    run_trackers(["tensorboard"], tmp_path, run_name="lr-1e-3")  # a named run: its own folder under runs/
    assert [e.value for e in tensorboard_events(tmp_path / "runs" / "lr-1e-3").Scalars("train/loss")] == [0.25, 0.125]


# ---------------------------------------------------------------------------------------------- trackio
@pytest.fixture
def trackio_dir(tmp_path, monkeypatch):
    """trackio's local store in tmp_path (trackio reads TRACKIO_DIR when imported: every module's copy)."""
    need("trackio")
    import trackio  # noqa: F401
    import trackio.sqlite_storage  # noqa: F401

    store = tmp_path / "trackio"
    store.mkdir()
    monkeypatch.setenv("TRACKIO_DIR", str(store))
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "trackio":
            for attr, sub in (("TRACKIO_DIR", ""), ("MEDIA_DIR", "media"), ("ARTIFACTS_DIR", "artifacts")):
                if isinstance(getattr(module, attr, None), Path):
                    monkeypatch.setattr(module, attr, store / sub if sub else store)
    return store


def test_trackio_logs_metrics_config_and_a_table(tmp_path, trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage

    run_trackers(["trackio"], tmp_path / "out", project="aha-test", run_name="run-a")
    assert list(trackio_dir.glob("*.db"))  # the run went to the store we pointed trackio at
    assert SQLiteStorage.get_runs("aha-test") == ["run-a"]
    logs = SQLiteStorage.get_logs("aha-test", "run-a")
    by_step = {}
    for entry in logs:
        by_step.setdefault(entry["step"], {}).update(entry)
    assert by_step[1]["train/loss"] == 0.25 and by_step[2]["train/loss"] == 0.125
    assert "train/kl" not in by_step[1]
    table = by_step[2]["completions"]
    assert table["_type"] == "trackio.table"
    assert table["_value"][1] == {"step": 2, "prompt": "2+2=", "completion": "5 | 4\nok", "reward": 0.0}
    config = SQLiteStorage.get_run_config("aha-test", "run-a")
    assert config["num_generations"] == 4


# ---------------------------------------------------------------------------------------------- wandb
def wandb_records(path):
    """The records of a run's .wandb file (a LevelDB-style log of wandb's protobuf Records, as `wandb sync` reads
    it): 32 KiB blocks of chunks, each with a 7-byte header (checksum, length, type: full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, parts = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding at the end of the file
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):  # full or last: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def test_wandb_offline_run_holds_metrics_config_and_the_table(tmp_path, monkeypatch):
    need("wandb")
    for var in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logs = tmp_path / "logs"
    run_trackers(["wandb"], tmp_path / "out", project="aha-test", run_name="run-w", logging_dir=logs)
    [path] = list((logs / "wandb").glob("offline-run-*/run-*.wandb"))  # logging_dir is wandb's dir
    for _ in range(100):  # wandb's service process may still be writing the log when finish() returns
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds, (kinds, path.stat().st_size)
    run = records[kinds.index("run")].run
    assert (run.project, run.display_name) == ("aha-test", "run-w")
    history = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            step: dict = {}
            for item in r.history.item:  # a table's fields come as nested keys (completions, _type), ...
                *outer, last = [item.key] if item.key else list(item.nested_key)
                place = step
                for k in outer:
                    place = place.setdefault(k, {})
                place[last] = json.loads(item.value_json)
            history.append(step)
    loss = [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert loss == [(1, 0.25), (2, 0.125)]
    assert not any("train/kl" in h for h in history)
    [table] = [h["completions"] for h in history if "completions" in h]
    assert table["_type"] == "table-file" and table["nrows"] == 2
    [saved] = list(path.parent.glob("files/media/table/completions_*.table.json"))
    assert json.loads(saved.read_text())["data"][1] == [2, "2+2=", "5 | 4\nok", 0.0]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}  # the run's settings
    assert config["num_generations"] == 4 and config["learning_rate"] == 0.001


def test_wandb_without_an_account_says_what_to_do(tmp_path, monkeypatch):
    need("wandb")
    import wandb

    def init(**kw):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(
        RuntimeError, match=r"wandb\.init failed \(api_key not configured.*`wandb login`.*WANDB_MODE=offline"
    ):
        Trackers(["wandb"], RunInfo(output_dir=tmp_path)).start()


# ---------------------------------------------------------------------------------------------- MLflow
def test_mlflow_run_holds_metrics_params_and_the_table(tmp_path, monkeypatch):
    """Through MLFLOW_TRACKING_URI (a file store here: MLflow's SQLite default takes ~10 s to create its tables)."""
    need("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "aha-exp")  # wins over project, as in transformers
    run_trackers(["mlflow"], tmp_path / "out", project="aha-test", run_name="run-m")
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("aha-exp").experiment_id])
    assert run.info.run_name == "run-m"
    assert run.info.status == "FINISHED"
    loss = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert loss == [(1, 0.25), (2, 0.125)]
    assert "train/kl" not in run.data.metrics
    assert run.data.params["num_generations"] == "4"
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "completions.json", str(tmp_path))).read_text())
    assert table["columns"] == COLUMNS and table["data"][1] == [2, "2+2=", "5 | 4\nok", 0.0]
    assert not (tmp_path / "out").exists()  # nothing in the run's folder when MLflow is told where to write


def test_mlflow_default_store_is_sqlite_in_logging_dir(tmp_path, monkeypatch):
    need("mlflow")
    import mlflow.tracking

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    made = []

    class Client:  # records where the tracker points MLflow (creating the SQLite tables is slow)
        def __init__(self, tracking_uri):
            made.append(tracking_uri)

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name, artifact_location=None):
            made.append((name, artifact_location))
            return "1"

        def create_run(self, experiment, run_name=None):
            return type("Run", (), {"info": type("Info", (), {"run_id": "r1"})})

        def log_batch(self, run_id, metrics=(), params=()):
            pass

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Client)
    logs = tmp_path / "logs"
    Trackers(["mlflow"], RunInfo(output_dir=tmp_path, project="aha-test", logging_dir=logs)).start()
    assert made == [
        f"sqlite:///{logs.absolute() / 'mlflow.db'}",
        ("aha-test", (logs.absolute() / "mlartifacts").as_uri()),
    ]


# ---------------------------------------------------------------------------------------------- the trainers
def test_grpo_reports_its_rows_and_completions_to_tensorboard(small_tiny, tmp_path):
    need("tensorboard")
    model, tok = small_tiny
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        log_completions=True,
        report_to="tensorboard",
        use_cpu=True,
        seed=0,
    )
    rows = get_task("arithmetic").rows("train", 8, seed=0)
    GRPOTrainer(model, lambda completions, **kw: [float(len(str(c))) for c in completions], args, rows, tok).train()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    acc = tensorboard_events(tmp_path / "run" / "runs")
    for key in ("reward", "loss", "learning_rate", "completions/mean_length"):
        assert [(e.step, e.value) for e in acc.Scalars(f"train/{key}")] == [
            (row["step"], pytest.approx(row[key])) for row in lines
        ], key
    tables = tb_text(acc, "completions/text_summary")
    assert [step for step, _ in tables] == [1, 2]  # one generation batch per step
    assert tables[0][1].startswith("| step | prompt | completion | <lambda> | reward |")
    assert tables[0][1].count("\n| 1 |") == 8  # every completion of the batch


def test_sft_reports_to_tensorboard(small_tiny, tmp_path):
    need("tensorboard")
    model, tok = small_tiny
    rows = get_task("arithmetic").rows("sft", 16, seed=0)
    cfg = SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, logging_steps=1, report_to="tensorboard"
    )
    state = SFTTrainer(model, cfg, rows, tok).train()
    acc = tensorboard_events(tmp_path / "runs")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (r["step"], pytest.approx(r["loss"]))
        for r in state.log_history
        if "loss" in r  # not the summary row
    ]
