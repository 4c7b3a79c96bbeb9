"""transformers.TrainerCallback objects in aha's GRPOTrainer: the events, the state and args they get, and the
TrainerControl flags they set, honoured as transformers' Trainer honours them."""

import pytest
import transformers
from transformers import TrainerCallback

from aha import GRPOConfig, GRPOTrainer
from aha.train.callbacks import FlowCallback

ROWS = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(8)]


def digits(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-3,
        max_steps=3,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        save_steps=10**6,
        seed=0,
        use_cpu=True,
    )
    return GRPOConfig(**{**base, **kw})


class Recorder(TrainerCallback):
    def __init__(self):
        self.events, self.logs, self.kwargs = [], [], {}

    def _seen(self, name, args, state, **kwargs):
        self.events.append((name, state.global_step))
        self.kwargs[name] = kwargs
        self.args, self.state = args, state

    def __getattribute__(self, name):
        if name.startswith("on_") and name != "on_log":
            return lambda args, state, control, **kw: self._seen(name, args, state, **kw)
        return super().__getattribute__(name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("on_log", state.global_step))
        self.logs.append(logs)


def test_events_state_and_args_as_transformers(small_tiny, tmp_path):
    model, tok = small_tiny
    rec = Recorder()
    rows_seen = []
    trainer = GRPOTrainer(model, digits, _cfg(tmp_path), ROWS, tok, callbacks=[rec, lambda s, r: rows_seen.append(r)])
    assert rec.events == [("on_init_end", 0)]
    out = trainer.train()
    names = [e for e, _ in rec.events]
    assert names[:3] == ["on_init_end", "on_train_begin", "on_epoch_begin"]
    assert names[3:12] == ["on_step_begin", "on_step_end", "on_log"] * 3
    assert names[12:] == ["on_epoch_end", "on_log", "on_train_end"]  # the last (partial) epoch; the summary row
    assert [s for e, s in rec.events if e == "on_step_end"] == [1, 2, 3]
    assert isinstance(rec.state, transformers.TrainerState) and rec.state is trainer.state
    assert rec.state.max_steps == 3 and rec.state.logging_steps == 1 and rec.state.is_world_process_zero
    assert rec.args is trainer.args
    kwargs = rec.kwargs["on_step_end"]
    assert kwargs["model"] is trainer.model and kwargs["processing_class"] is tok
    assert kwargs["optimizer"] is trainer.loop.optimizer and kwargs["lr_scheduler"] is trainer.loop.scheduler
    # on_log gets transformers' logs (epoch in, step out); aha's plain callables get every row too
    assert "reward" in rec.logs[0] and "epoch" in rec.logs[0] and "step" not in rec.logs[0]
    assert {"train_runtime", "train_loss", "train_samples_per_second", "train_steps_per_second"} <= set(rec.logs[-1])
    assert rows_seen == trainer.state.log_history[:-1]  # plain callables: every row but the summary
    assert out.global_step == 3 and out.training_loss == out.metrics["train_loss"]


class Controller(TrainerCallback):
    """Raises control flags at given steps."""

    def __init__(self, **at):
        self.at, self.saved, self.evaluated = at, [], []

    def on_step_end(self, args, state, control, **kwargs):
        for flag, steps in self.at.items():
            if state.global_step in steps:
                setattr(control, flag, True)
        return control

    def on_save(self, args, state, control, **kwargs):
        self.saved.append(state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluated.append((state.global_step, metrics))


def test_control_flags_are_honoured(small_tiny, tmp_path):
    model, tok = small_tiny
    ctl = Controller(should_save=[1], should_evaluate=[2], should_log=[1, 2, 3, 4], should_training_stop=[4])
    cfg = _cfg(tmp_path, max_steps=10, logging_steps=100)
    trainer = GRPOTrainer(model, digits, cfg, ROWS, tok, callbacks=[ctl], eval_dataset=ROWS[:2])
    out = trainer.train()
    assert out.global_step == 4  # stopped by the callback, not at max_steps
    assert (tmp_path / "run" / "checkpoint-1").is_dir() and ctl.saved == [1]
    assert [s for s, _ in ctl.evaluated] == [2] and "eval_reward" in ctl.evaluated[0][1]
    windows = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["step"] for r in windows] == [1, 2, 3, 4]  # logging_steps=100: each row asked for by should_log
    evals = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2]


def test_should_evaluate_without_an_eval_dataset_is_a_clear_error(small_tiny, tmp_path):
    model, tok = small_tiny
    trainer = GRPOTrainer(model, digits, _cfg(tmp_path), ROWS, tok, callbacks=[Controller(should_evaluate=[1])])
    with pytest.raises(ValueError, match="should_evaluate.*no eval_dataset"):
        trainer.train()


def test_add_pop_remove_as_transformers(small_tiny, tmp_path):
    model, tok = small_tiny
    trainer = GRPOTrainer(model, digits, _cfg(tmp_path), ROWS, tok)
    assert [type(c) for c in trainer.callback_handler.callbacks] == [FlowCallback]
    assert isinstance(trainer.callback_handler.callbacks[0], transformers.DefaultFlowCallback)
    trainer.add_callback(Recorder)  # a class is instantiated
    rec = trainer.callback_handler.callbacks[-1]
    assert isinstance(rec, Recorder)
    assert trainer.pop_callback(Recorder) is rec and trainer.pop_callback(Recorder) is None
    ctl = Controller()
    trainer.add_callback(ctl)
    trainer.remove_callback(ctl)
    assert [type(c) for c in trainer.callback_handler.callbacks] == [FlowCallback]
    plain = []
    trainer.add_callback(lambda state, row: plain.append(row["step"]))
    trainer.remove_callback(FlowCallback)  # without the flow nothing is logged, saved or evaluated (as in transformers)
    trainer.train()
    assert plain == [] and [r["step"] for r in trainer.state.log_history] == [3]  # only the summary row
    assert trainer.state.global_step == 3
    with pytest.raises(ValueError, match="neither a transformers.TrainerCallback nor a callable"):
        trainer.add_callback(42)
