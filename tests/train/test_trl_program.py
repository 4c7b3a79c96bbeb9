"""A TRL 1.16 program runs on aha with only its import changed: eval_dataset, a TrainerCallback, async and sync
reward functions using TRL's trainer keyword arguments, report_to="tensorboard" (read back with TensorBoard's own
event reader)."""

import asyncio

import pytest
from datasets import Dataset
from transformers import TrainerCallback

# a TRL program reads: from trl import GRPOConfig, GRPOTrainer
from aha import GRPOConfig, GRPOTrainer
from aha.models.tiny import build_tiny

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def test_trl_program_with_only_the_import_changed(small_tiny, tmp_path):
    model, tokenizer = small_tiny
    train_dataset = Dataset.from_dict(
        {"prompt": [f"What is {a} + {a}?" for a in range(8)], "answer": [str(2 * a) for a in range(8)]}
    )
    eval_dataset = Dataset.from_dict({"prompt": ["What is 5 + 5?", "What is 6 + 6?"], "answer": ["10", "12"]})

    async def length_reward(completions, **kwargs):
        await asyncio.sleep(0)  # e.g. a call to a judge
        return [-abs(len(c) - 8) / 8 for c in completions]

    def answer_reward(completions, answer, trainer_state, log_metric, log_extra, **kwargs):
        log_metric("train_progress", trainer_state.global_step / trainer_state.max_steps)
        log_extra("gold", answer)
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

    class EvalTracker(TrainerCallback):
        def __init__(self):
            self.steps, self.eval_rewards = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.eval_rewards.append(metrics["eval_rewards/length_reward/mean"])

    training_args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=4,
        num_generations_eval=2,
        log_completions=True,
        report_to="tensorboard",
        use_cpu=True,
    )
    tracker = EvalTracker()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[length_reward, answer_reward],
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[tracker],
    )
    result = trainer.train()
    metrics = trainer.evaluate()

    assert result.global_step == 3 and tracker.steps == [1, 2, 3]
    assert len(tracker.eval_rewards) == 3  # eval_steps=2, the last step, and evaluate()
    history = trainer.state.log_history
    train_rows = [r for r in history if "loss" in r]
    assert [r["train_progress"] for r in train_rows] == [0.0, 1 / 3, 2 / 3]  # log_metric, with trainer_state
    assert all("rewards/length_reward/mean" in r and "rewards/answer_reward/mean" in r for r in train_rows)
    eval_rows = [r for r in history if "eval_loss" in r]
    assert [r["step"] for r in eval_rows] == [2, 3, 3]
    assert "eval_train_progress" in eval_rows[0]  # log_metric in the evaluation: under eval_
    assert {"eval_reward", "eval_completions/mean_length", "eval_rewards/answer_reward/mean"} <= set(metrics)
    assert "train_runtime" in result.metrics and result.training_loss == result.metrics["train_loss"]
    events = EventAccumulator(str(tmp_path / "out" / "runs"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 3]  # during train(); evaluate() after it is not


EVENTS = ("on_init_end", "on_train_begin", "on_epoch_begin", "on_step_begin", "on_step_end", "on_epoch_end")
EVENTS += ("on_log", "on_evaluate", "on_save", "on_train_end")


class EventLog(TrainerCallback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name in EVENTS:
            return lambda args, state, control, **kw: self.events.append((name, state.global_step))
        return super().__getattribute__(name)


def test_logged_names_and_events_are_trls(small_tiny, tmp_path):
    """TRL 1.16 itself as the oracle: every key of its training, eval and summary rows is in aha's, and callbacks see
    the same events at the same steps."""
    trl = pytest.importorskip("trl")
    dataset = Dataset.from_dict({"prompt": [f"{a}+{a}=" for a in range(8)]})

    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    def run(config_cls, trainer_cls, model, tok, name, **extra):
        args = config_cls(
            output_dir=str(tmp_path / name),
            use_cpu=True,
            bf16=False,
            report_to="none",
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=6,
            max_steps=2,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=1,
            per_device_eval_batch_size=4,
            num_generations_eval=2,
            **extra,
        )
        log = EventLog()
        trainer = trainer_cls(
            model=model,
            reward_funcs=[length],
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset.select(range(2)),
            processing_class=tok,
            callbacks=[log],
        )
        trainer.train()
        train, evaluation = trainer.state.log_history[:2]
        return (set(train), set(evaluation), set(trainer.state.log_history[-1])), log.events

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)
    theirs, their_events = run(trl.GRPOConfig, trl.GRPOTrainer, *build_tiny(**sizes), "trl", save_strategy="no")
    ours, our_events = run(GRPOConfig, GRPOTrainer, *small_tiny, "aha", save_steps=10**6)
    for mine, trls in zip(ours, theirs):
        assert trls <= mine, sorted(trls - mine)
    assert our_events == their_events, (our_events, their_events)
    assert ("on_evaluate", 2) in our_events and our_events[-1] == ("on_train_end", 2)


def test_every_trl_trainer_argument_is_taken_or_refused_clearly(small_tiny, tmp_path):
    """Each argument of TRL 1.16's GRPOTrainer exists by name in aha's; those aha does not take are refused with
    what to use instead, and reward_funcs (optional in TRL for environments that give the reward) is required
    otherwise, with a clear error (tools and environment_factory: tests/train/test_tools_grpo.py)."""
    import inspect

    trl = pytest.importorskip("trl")
    ours = inspect.signature(GRPOTrainer.__init__).parameters
    assert set(inspect.signature(trl.GRPOTrainer.__init__).parameters) <= set(ours)
    model, tok = small_tiny
    cfg = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=4)
    data = [{"prompt": "1+1"}] * 4
    refused = {
        "optimizers": ((object(), None), "GRPOConfig.optim"),
        "quantization_config": (object(), "does not load quantised"),
        "rollout_func": (len, "aha runs the rollouts itself"),
    }
    for name, (value, message) in refused.items():
        with pytest.raises(ValueError, match=message):
            GRPOTrainer(model, [len], cfg, data, processing_class=tok, **{name: value})
    with pytest.raises(ValueError, match="reward_funcs is required"):
        GRPOTrainer(model, args=cfg, train_dataset=data, processing_class=tok)
