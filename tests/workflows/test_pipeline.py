"""``aha pipeline``: the shipped R1 pipeline end to end at CI size, resume after a failure, dry run, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import aha.workflows.pipeline
from aha.cli import main

RECIPE = str(Path(__file__).resolve().parents[2] / "recipes" / "r1-pipeline-tiny.yaml")
SMALL = "{tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}"
CI = [
    f"model={SMALL}",
    "eval.dataset.n=4",
    "eval.samples=1",
    "eval.max_new_tokens=8",
    "stages.*.training.max_steps=2",
    "stages.*.training.per_device_train_batch_size=8",
    "stages.*.training.num_generations=4",
    "stages.*.training.max_completion_length=8",
    "stages.*.training.logging_steps=1",
    "stages.*.dataset.n=16",
    "stages.rs.n=2",
    "stages.rs.max_new_tokens=8",
    "stages.rs.keep=all",  # an untrained model solves nothing: keep every sample so that stage 4 has data
]
STAGES = ["1-cold-start", "2-grpo", "3-rs", "4-sft-rs", "5-grpo-mixed"]


def _args(out: Path, *extra: str) -> list[str]:
    return ["pipeline", RECIPE, "--out", str(out), "--no-plot", *[x for s in CI for x in ("--set", s)], *extra]


class Calls(list):
    """The stage directories actually run (training or sampling), in order; `fail`: stage 3 raises."""

    fail = False


@pytest.fixture
def calls(monkeypatch) -> Calls:
    ran = Calls()
    train, sample = aha.workflows.pipeline.run_training_stage, aha.workflows.pipeline.run_sample_stage

    def run_training(config, out, stage_dir, plot, base):
        ran.append(stage_dir.name)
        return train(config, out, stage_dir, plot, base)

    def run_sample(config, out, stage_dir, base):
        ran.append(stage_dir.name)
        if ran.fail:
            (stage_dir / "partial").mkdir(parents=True)
            raise RuntimeError("killed in stage 3")
        return sample(config, out, stage_dir, base)

    monkeypatch.setattr(aha.workflows.pipeline, "run_training_stage", run_training)
    monkeypatch.setattr(aha.workflows.pipeline, "run_sample_stage", run_sample)
    return ran


def test_pipeline_end_to_end_and_resume(tmp_path, calls, capsys) -> None:
    out = tmp_path / "p"
    calls.fail = True
    with pytest.raises(RuntimeError, match="stage 3"):
        main(_args(out))
    assert calls == STAGES[:3]  # stage 3 started, and failed
    assert [(out / s / "stage_done.json").is_file() for s in STAGES[:3]] == [True, True, False]
    stamps = {s: (out / s / "stage_done.json").stat().st_mtime_ns for s in STAGES[:2]}
    weights = {s: (out / s / "model" / "model.safetensors").stat().st_mtime_ns for s in STAGES[:2]}

    calls.clear()
    calls.fail = False
    assert main(_args(out)) == 0
    assert calls == STAGES[2:]  # only the unfinished stages ran again
    assert stamps == {s: (out / s / "stage_done.json").stat().st_mtime_ns for s in STAGES[:2]}
    assert weights == {s: (out / s / "model" / "model.safetensors").stat().st_mtime_ns for s in STAGES[:2]}
    assert not (out / "3-rs" / "partial").exists()

    summary = json.loads((out / "summary.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == ["0-start", *STAGES]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in summary["stages"])
    assert all(r.get("resumed") for r in summary["stages"][:3]) and not summary["stages"][3].get("resumed")
    assert "held-out accuracy" in capsys.readouterr().err  # aha's console prints to stderr
    samples = [json.loads(x) for x in (out / "3-rs" / "samples.jsonl").read_text().splitlines()]
    assert samples and (out / "3-rs" / "samples.pass_rates.jsonl").is_file()
    recipe = (out / "recipes" / "4-sft-rs.yaml").read_text()
    assert str(out / "3-rs" / "samples.jsonl") in recipe and str(out / "2-grpo") in recipe
    assert str(out / "4-sft-rs") in (out / "recipes" / "5-grpo-mixed.yaml").read_text()
    assert json.loads((out / "4-sft-rs" / "summary.json").read_text())["rows"] == len(samples)

    calls.clear()
    assert main(_args(out)) == 0 and calls == []  # everything finished: nothing runs
    assert main(_args(out, "--set", "stages.grpo.training.max_steps=3")) == 1
    assert "other settings" in capsys.readouterr().err


def test_dry_run_checks_every_stage(capsys) -> None:
    assert main(["pipeline", RECIPE, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pipeline is valid" in out and "@3-rs's samples.jsonl" in out
    stages = __import__("yaml").safe_load(out)["stages"]
    assert [s["stage"] for s in stages] == STAGES
    assert [s["model"] for s in stages[1:]] == ["@1-cold-start", "@2-grpo", "@2-grpo", "@4-sft-rs"]
    assert [r if isinstance(r, str) else r["name"] for r in stages[4]["rewards"]] == ["correctness", "format", "length"]
    assert stages[0]["training"]["max_steps"] == 400 and "use_cpu" not in stages[0]["training"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("stages.nope.training.max_steps=2", "no stage 'nope'"),
        ("stages.rs.temprature=0.5", "did you mean 'temperature'"),
        ("stages.grpo.training.max_stepz=2", "max_stepz"),
        ("stages.*.nothing=1", "nothing"),
        ("stages.rs.max_pass_rate=2.0", "pass rates"),
    ],
)
def test_bad_overrides(bad: str, message: str, capsys) -> None:
    assert main(["pipeline", RECIPE, "--dry-run", "--set", bad]) == 1
    assert message in capsys.readouterr().err


TWO_STAGES = f"""
model: {SMALL}
training: {{seed: 0, logging_steps: 1, use_cpu: true}}
stages:
  - {{name: sft, kind: sft, dataset: {{task: arithmetic, split: sft, n: 32}},
     training: {{max_steps: 4, save_steps: 100, learning_rate: 1.0e-2, per_device_train_batch_size: 8}}}}
  - {{name: rs, kind: sample, dataset: {{task: arithmetic, split: train, n: 4}}, n: 2, max_new_tokens: 6, keep: all}}
"""


def test_ctrl_c_in_a_training_stage_continues_from_its_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    import signal

    from safetensors.torch import load_file

    from aha.train.loop import TrainingLoop

    recipe = tmp_path / "two.yaml"
    recipe.write_text(TWO_STAGES)
    assert main(["pipeline", str(recipe), "--out", str(tmp_path / "ref"), "--no-plot"]) == 0
    log_window = TrainingLoop.log_window

    def ctrl_c_at_step_2(self):
        log_window(self)
        if self.state.global_step == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(TrainingLoop, "log_window", ctrl_c_at_step_2)
    out = tmp_path / "p"
    argv = ["pipeline", str(recipe), "--out", str(out), "--no-plot"]
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"aha pipeline: stopped by SIGINT after step 2; saved {out / '1-sft' / 'checkpoint-2'}; resume with: "
        f"aha pipeline {recipe} --out {out} --no-plot"  # without --overwrite, which would start over
    )
    monkeypatch.setattr(TrainingLoop, "log_window", log_window)
    assert main(argv) == 0
    assert f"stage 1-sft: continuing from {out / '1-sft' / 'checkpoint-2'}" in capsys.readouterr().err
    a, b = (
        load_file(tmp_path / "ref" / "1-sft" / "model" / "model.safetensors"),
        load_file(out / "1-sft" / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "2-rs" / "samples.jsonl").read_text() == (tmp_path / "ref" / "2-rs" / "samples.jsonl").read_text()


def test_tool_use_rates_join_the_table_only_where_a_stage_measured_them():
    from aha.workflows.pipeline import HELD_OUT, before_after, held_out_keys

    plain = [{"stage": "1-a", "kind": "sft", "accuracy": 0.1}, {"stage": "2-b", "kind": "grpo", "accuracy": 0.5}]
    assert held_out_keys(plain) == HELD_OUT and "tool_use_before" not in before_after(plain)
    tools = [
        {**plain[0], "tool_use": 1.0, "tool_use_sampled": 0.5},
        {**plain[1], "tool_use": 1.0, "tool_use_sampled": 0.9},
    ]
    assert held_out_keys(tools) == (*HELD_OUT, "tool_use", "tool_use_sampled")
    got = before_after(tools)
    assert got["tool_use_sampled_before"] == 0.5 and got["tool_use_sampled_after"] == 0.9
