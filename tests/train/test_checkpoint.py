"""Checkpoint layout, finding the newest complete one, rotation, and exact in-process resume."""

import json
import re

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


# ------------------------------------------------------------------------------------------ damaged checkpoints
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run with a checkpoint after every step, and its final weights."""
    out = tmp_path_factory.mktemp("finished") / "run"
    t = _trainer(out)
    t.train()
    return out, {k: v.clone() for k, v in t.model.state_dict().items()}


def _copy(finished, tmp_path):
    import shutil

    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble(f):  # the same size, other bytes in the middle
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(255 - b for b in data[mid : mid + 8])
    f.write_bytes(bytes(data))


DAMAGE = [
    ("model.safetensors", _truncate, "bytes, the marker recorded"),
    ("optimizer.pt", _truncate, "bytes, the marker recorded"),
    ("rng_state.pt", _garble, "SHA-256 differs"),
    ("loop_state.pt", _garble, "SHA-256 differs"),
    ("trainer_state.json", lambda f: f.write_text("{" + " " * (f.stat().st_size - 1)), "SHA-256 differs"),
]


@pytest.mark.parametrize(("name", "damage", "says"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, finished, capsys, name, damage, says):
    out = _copy(finished, tmp_path)
    damage(out / "checkpoint-4" / name)
    assert checkpoint.verify_checkpoint(out / "checkpoint-3") is None
    assert checkpoint.resolve_checkpoint(out, "auto") == out / "checkpoint-3"
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and f"checkpoint-4 is damaged ({name}" in line and says in line
    assert line.endswith(f"resuming from {out / 'checkpoint-3'} instead")
    with pytest.raises(ValueError, match=rf"checkpoint-4 is damaged: {re.escape(name)}"):
        checkpoint.resolve_checkpoint(out, out / "checkpoint-4")  # named explicitly: refused, not replaced


def test_resuming_past_a_damaged_checkpoint_ends_as_the_uninterrupted_run(tmp_path, finished):
    out = _copy(finished, tmp_path)
    _truncate(out / "checkpoint-4" / "model.safetensors")
    metrics = out / "metrics.jsonl"
    resumed = _trainer(out)
    assert resumed.train(resume_from_checkpoint="auto").global_step == 4
    assert resumed.loop.resumed_from == out / "checkpoint-3"
    for name, w in finished[1].items():
        assert torch.equal(w, resumed.model.state_dict()[name]), name
    assert checkpoint.verify_checkpoint(out / "checkpoint-4") is None  # re-saved
    assert _lines(out) == _lines(finished[0]) and metrics.is_file()


def test_no_intact_checkpoint_is_a_clear_refusal(tmp_path, finished):
    out = _copy(finished, tmp_path)
    for p, (name, damage, _) in zip(checkpoint.list_checkpoints(out), DAMAGE):
        damage(p / name)
    with pytest.raises(ValueError, match="no checkpoint in .* is intact") as e:
        checkpoint.resolve_checkpoint(out, "auto")
    for step, (name, _, _) in zip(range(1, 5), DAMAGE):
        assert f"checkpoint-{step} is damaged ({name}" in str(e.value)
    (out / "checkpoint-2" / checkpoint.MARKER).write_text("{oops")
    assert "checkpoint_complete.json (the completion marker) is unreadable" in checkpoint.verify_checkpoint(
        out / "checkpoint-2"
    )


def test_an_older_checkpoint_without_hashes_is_checked_by_loading_it(tmp_path, finished):
    """Markers written by an older aha hold only the step: such a checkpoint resumes when each file loads."""
    out = _copy(finished, tmp_path)
    for p in checkpoint.list_checkpoints(out):
        (p / checkpoint.MARKER).write_text(json.dumps({"step": int(p.name.split("-")[1])}) + "\n")
    assert checkpoint.verify_checkpoint(out / "checkpoint-4") is None
    _truncate(out / "checkpoint-4" / "model.safetensors")
    assert "model.safetensors does not load" in checkpoint.verify_checkpoint(out / "checkpoint-4")
    _truncate(out / "checkpoint-3" / "rng_state.pt")
    assert "rng_state.pt does not load" in checkpoint.verify_checkpoint(out / "checkpoint-3")
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert "trainer_state.json does not load" in checkpoint.verify_checkpoint(out / "checkpoint-2")
    resumed = _trainer(out)
    resumed.train(resume_from_checkpoint="auto")  # from checkpoint-1, the only loadable one
    assert resumed.loop.resumed_from == out / "checkpoint-1"
    for name, w in finished[1].items():
        assert torch.equal(w, resumed.model.state_dict()[name]), name


def test_a_checkpoint_moved_aside_by_a_resave_comes_back(tmp_path, finished):
    out = _copy(finished, tmp_path)
    (out / "checkpoint-4").rename(out / ".checkpoint-4.old")  # died between the re-save's two renames
    checkpoint.remove_stale(out)
    assert checkpoint.resolve_checkpoint(out, "auto") == out / "checkpoint-4"
    checkpoint.rotate(out, 2)
    assert [p.name for p in sorted(out.iterdir()) if "checkpoint" in p.name] == ["checkpoint-3", "checkpoint-4"]
