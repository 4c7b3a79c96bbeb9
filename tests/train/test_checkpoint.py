"""Checkpoint layout, finding the newest complete one, rotation, and exact in-process resume."""

import json

import pytest
import torch

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.models.tiny import build_tiny
from aha.tasks import get_task
from aha.train import checkpoint


def digits(completions, **kw):
    return [sum(ch.isdigit() for ch in completion_text(c)) / max(1, len(completion_text(c))) for c in completions]


def _trainer(out, **kw):
    model, tok = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)
    base = dict(
        output_dir=str(out),
        learning_rate=3e-3,
        max_steps=4,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        save_steps=1,
        seed=0,
        use_cpu=True,
    )
    base.update(kw)
    return GRPOTrainer(
        model, digits, GRPOConfig(**base), get_task("arithmetic").rows("train", 16, seed=0), processing_class=tok
    )


def _lines(out):
    return [
        {k: v for k, v in json.loads(x).items() if k != "step_time"}
        for x in (out / "metrics.jsonl").read_text().splitlines()
    ]


def test_checkpoint_layout_and_rotation(tmp_path):
    t = _trainer(tmp_path / "run", save_total_limit=2)
    t.train()
    names = sorted(p.name for p in (tmp_path / "run").iterdir() if "checkpoint" in p.name)
    assert names == ["checkpoint-3", "checkpoint-4"]
    ck = tmp_path / "run" / "checkpoint-4"
    for f in (
        "model.safetensors",
        "tokenizer_config.json",
        "optimizer.pt",
        "rng_state.pt",
        "loop_state.pt",
        "trainer_state.json",
        checkpoint.MARKER,
    ):
        assert (ck / f).is_file(), f
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and len(state["log_history"]) == 4
    assert state["metrics_offset"] == (tmp_path / "run" / "metrics.jsonl").stat().st_size


def test_incomplete_and_temporary_checkpoints_are_ignored(tmp_path):
    out = tmp_path / "run"
    _trainer(out, max_steps=2).train()
    (out / ".checkpoint-3.tmp").mkdir()
    (out / "checkpoint-5").mkdir()  # no completion marker: a half-written one
    (out / "checkpoint-5" / "model.safetensors").write_text("garbage")
    assert checkpoint.latest_checkpoint(out) == out / "checkpoint-2"
    assert checkpoint.resolve_checkpoint(out, "auto") == out / "checkpoint-2"
    assert checkpoint.resolve_checkpoint(tmp_path / "empty", "auto") is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        checkpoint.resolve_checkpoint(tmp_path / "empty", True)
    with pytest.raises(ValueError, match="incomplete"):
        checkpoint.resolve_checkpoint(out, out / "checkpoint-5")


def test_resume_in_process_matches_uninterrupted(tmp_path, monkeypatch):
    ref = _trainer(tmp_path / "ref")
    ref.train()
    # a run whose checkpoint-3 write dies midway (after the weights, before the rename)
    out = tmp_path / "run"
    t = _trainer(out)
    real = checkpoint.write_checkpoint

    def flaky(output_dir, step, **parts):
        if step == 3:
            parts["model"].save_pretrained(out / ".checkpoint-3.tmp")
            raise OSError("disk full")
        return real(output_dir, step, **parts)

    monkeypatch.setattr(checkpoint, "write_checkpoint", flaky)
    with pytest.raises(OSError, match="disk full"):
        t.train()
    monkeypatch.setattr(checkpoint, "write_checkpoint", real)
    assert checkpoint.latest_checkpoint(out) == out / "checkpoint-2"
    resumed = _trainer(out)
    state = resumed.train(resume_from_checkpoint="auto")
    assert state.global_step == 4 and [r["step"] for r in state.log_history] == [1, 2, 3, 4, 4]  # + the summary
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _lines(tmp_path / "ref") == _lines(out)
    # an explicit path works too, and resuming a finished run does nothing more
    again = _trainer(out)
    assert again.train(resume_from_checkpoint=str(out / "checkpoint-4")).global_step == 4
    assert _lines(out) == _lines(tmp_path / "ref")
