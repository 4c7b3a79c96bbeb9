"""SIGINT/SIGTERM handling: the guard records the first signal in a stoppable stretch and raises otherwise, puts
the previous handlers back, and the training loop stops at a step boundary with a checkpoint it resumes from."""

import signal

import pytest
import torch

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.models.tiny import build_tiny
from aha.tasks import get_task
from aha.train import checkpoint
from aha.train.interrupts import Interrupted, graceful_signals, requested, stoppable


def test_first_signal_is_recorded_in_a_stoppable_stretch_and_a_second_one_raises():
    with graceful_signals():
        with stoppable():
            signal.raise_signal(signal.SIGTERM)
            assert requested() == signal.SIGTERM  # recorded, nothing raised
            with pytest.raises(Interrupted) as second:
                signal.raise_signal(signal.SIGINT)
        assert second.value.signum == signal.SIGINT and second.value.exit_code == 130 and second.value.saved is None
        with stoppable():
            assert requested() is None  # a new stretch starts clean
        with pytest.raises(Interrupted) as outside:  # outside a stoppable stretch: at once
            signal.raise_signal(signal.SIGTERM)
        assert outside.value.exit_code == 143 and isinstance(outside.value, KeyboardInterrupt)


def test_previous_handlers_come_back_even_after_an_error():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RuntimeError), graceful_signals():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
        raise RuntimeError("boom")
    assert {s: signal.getsignal(s) for s in before} == before
    with stoppable():  # without the guard: a no-op, and Ctrl-C is Python's own KeyboardInterrupt again
        assert requested() is None
        with pytest.raises(KeyboardInterrupt) as e:
            signal.raise_signal(signal.SIGINT)
        assert not isinstance(e.value, Interrupted)


def digits(completions, **kw):
    return [sum(ch.isdigit() for ch in completion_text(c)) / max(1, len(completion_text(c))) for c in completions]


def _trainer(out, callbacks=(), **kw):
    model, tok = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)
    args = dict(
        output_dir=str(out),
        learning_rate=3e-3,
        max_steps=5,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        save_steps=100,  # no regular checkpoint: the interrupt's is the only one
        seed=0,
        use_cpu=True,
    )
    rows = get_task("arithmetic").rows("train", 16, seed=0)
    return GRPOTrainer(model, digits, GRPOConfig(**(args | kw)), rows, processing_class=tok, callbacks=callbacks)


def test_the_loop_stops_at_the_step_boundary_saves_and_resumes_exactly(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    ref = _trainer(tmp_path / "ref")
    ref.train()
    assert signal.getsignal(signal.SIGINT) is before  # the Python API installs nothing

    def ctrl_c(state, row):
        if state.global_step == 2:
            signal.raise_signal(signal.SIGINT)  # mid-run: the log of step 2, before step 3 starts

    out = tmp_path / "run"
    with graceful_signals(), pytest.raises(Interrupted) as stop:
        _trainer(out, [ctrl_c]).train()
    assert stop.value.saved == out / "checkpoint-2" and stop.value.after == "step 2"
    assert checkpoint.verify_checkpoint(out / "checkpoint-2") is None
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["checkpoint-2"]
    resumed = _trainer(out)
    assert resumed.train(resume_from_checkpoint="auto").global_step == 5
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_on_the_last_step_still_saves(tmp_path):
    def ctrl_c(state, row):
        if state.global_step == 5:
            signal.raise_signal(signal.SIGTERM)

    out = tmp_path / "run"
    with graceful_signals(), pytest.raises(Interrupted) as stop:
        _trainer(out, [ctrl_c], save_steps=5).train()
    assert stop.value.saved == out / "checkpoint-5" and stop.value.exit_code == 143  # the step's own checkpoint
    assert _trainer(out).train(resume_from_checkpoint="auto").global_step == 5


def test_a_second_signal_while_saving_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ref = _trainer(tmp_path / "ref")
    ref.train()
    real = checkpoint.save_model

    def interrupted_save(model, tok, out, **kw):  # the second Ctrl-C lands while checkpoint-3 is being written
        real(model, tok, out, **kw)
        if ".checkpoint-3.tmp" in str(out):
            signal.raise_signal(signal.SIGINT)

    def ctrl_c(state, row):
        if state.global_step == 3:
            signal.raise_signal(signal.SIGINT)  # the first: finish step 3 and save

    monkeypatch.setattr(checkpoint, "save_model", interrupted_save)
    out = tmp_path / "run"
    with graceful_signals(), pytest.raises(Interrupted) as stop:
        _trainer(out, [ctrl_c], save_steps=1).train()
    assert stop.value.saved is None and "stopped at once by SIGINT" in str(stop.value)
    assert (out / ".checkpoint-3.tmp").is_dir() and not (out / "checkpoint-3").exists()
    monkeypatch.setattr(checkpoint, "save_model", real)
    assert checkpoint.resolve_checkpoint(out, "auto") == out / "checkpoint-2"
    resumed = _trainer(out)
    resumed.train(resume_from_checkpoint="auto")
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
