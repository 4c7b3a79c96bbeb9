"""GRPOTrainer as TRL 1.16's: evaluation (eval_dataset, eval_strategy, evaluate()), streams, the summary row and
TrainOutput, every completion masked, and the reference-model sync (sync_ref_model)."""

import json

import pytest
import torch
from datasets import Dataset, IterableDataset

from aha import GRPOConfig, GRPOTrainer

ROWS = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(8)]


def digits(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def _cfg(tmp_path, name="run", **kw):
    base = dict(
        output_dir=str(tmp_path / name),
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


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_returns_trls_eval_metrics(small_tiny, tmp_path):
    model, tok = small_tiny
    seen = []

    def counting(completions, **kwargs):
        seen.append(len(completions))
        return digits(completions)

    cfg = _cfg(tmp_path, per_device_eval_batch_size=6, num_generations_eval=3)
    trainer = GRPOTrainer(model, [counting], cfg, ROWS, tok, eval_dataset=ROWS[:5])
    metrics = trainer.evaluate()
    assert seen == [6, 6, 3]  # 5 prompts × 3 completions, in batches of 6
    for key in (
        "eval_loss",
        "eval_runtime",
        "eval_samples_per_second",
        "eval_steps_per_second",
        "eval_reward",
        "eval_reward_std",
        "eval_rewards/counting/mean",
        "eval_rewards/counting/std",
        "eval_completions/mean_length",
        "eval_completions/clipped_ratio",
        "eval_frac_reward_zero_std",
        "eval_entropy",
        "epoch",
    ):
        assert key in metrics, key
    assert all(isinstance(metrics[k], float) for k in ("eval_loss", "eval_reward", "eval_entropy"))
    row = trainer.state.log_history[-1]
    assert row["eval_reward"] == metrics["eval_reward"] and row["step"] == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eval_reward"] == pytest.approx(metrics["eval_reward"])
    assert trainer.evaluate()["eval_reward"] == metrics["eval_reward"]  # its own generator, seeded: repeatable
    both = trainer.evaluate({"a": ROWS[:2], "b": ROWS[2:4]})
    assert "eval_a_reward" in both and "eval_b_loss" in both
    with pytest.raises(ValueError, match="ignore_keys"):
        trainer.evaluate(ignore_keys=["x"])


def test_eval_during_training_leaves_the_training_alone(small_tiny, tmp_path):
    model, tok = small_tiny
    plain = GRPOTrainer(model, digits, _cfg(tmp_path, "plain"), ROWS, tok)
    plain.train()
    want = _weights(plain.model)

    from aha.models.tiny import build_tiny

    model2, tok2 = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)
    cfg = _cfg(tmp_path, "eval", eval_strategy="steps", eval_steps=2, eval_on_start=True, num_generations_eval=1)
    trainer = GRPOTrainer(model2, digits, cfg, ROWS, tok2, eval_dataset=ROWS[:4])
    trainer.train()
    evals = [r for r in trainer.state.log_history if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]  # on start, every 2 steps, and at the last step
    assert all(r["eval_frac_reward_zero_std"] == 1.0 for r in evals)  # one completion per prompt
    got = _weights(trainer.model)
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_eval_each_epoch(small_tiny, tmp_path):
    model, tok = small_tiny
    cfg = _cfg(tmp_path, eval_strategy="epoch", max_steps=-1, num_train_epochs=2)
    trainer = GRPOTrainer(model, digits, cfg, ROWS[:4], tok, eval_dataset=ROWS[:2])
    trainer.train()  # 4 prompts, 2 per step: an epoch is 2 steps
    assert [r["step"] for r in trainer.state.log_history if "eval_loss" in r] == [2, 4]
    assert trainer.state.epoch == 2.0


def test_eval_strategy_needs_an_eval_dataset(small_tiny, tmp_path):
    model, tok = small_tiny
    with pytest.raises(ValueError, match="eval_strategy='steps' but no eval_dataset"):
        GRPOTrainer(model, digits, _cfg(tmp_path, eval_strategy="steps"), ROWS, tok)
    with pytest.raises(ValueError, match="eval_dataset needs a 'prompt' column"):
        GRPOTrainer(model, digits, _cfg(tmp_path), ROWS, tok, eval_dataset=[{"question": "x"}])


# ------------------------------------------------------------------------------------------------ summary
def test_summary_row_and_train_output(small_tiny, tmp_path):
    model, tok = small_tiny
    trainer = GRPOTrainer(model, digits, _cfg(tmp_path), ROWS, tok)
    out = trainer.train()
    last = trainer.state.log_history[-1]
    assert set(last) >= {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
    assert last["step"] == 3 and "epoch" in last and last["total_flos"] > 0
    windows = trainer.state.log_history[:-1]
    assert last["train_loss"] == pytest.approx(sum(r["loss"] for r in windows) / 3)
    assert out.global_step == 3 and out.training_loss == last["train_loss"] and out.metrics["total_flos"] > 0
    assert out.log_history is trainer.state.log_history  # aha's train() returned the state: its fields read through
    assert trainer.state.total_flos == last["total_flos"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the summary is not a step of the metrics file


# ------------------------------------------------------------------------------------------------ streams
def _stream(rows):
    return IterableDataset.from_generator(lambda: iter(rows))


def test_a_stream_trains_with_max_steps(small_tiny, tmp_path):
    model, tok = small_tiny
    with pytest.raises(ValueError, match="no length.*max_steps"):
        GRPOTrainer(model, digits, _cfg(tmp_path, max_steps=-1), _stream(ROWS[:4]), tok)
    trainer = GRPOTrainer(model, digits, _cfg(tmp_path), _stream(ROWS[:4]), tok, eval_dataset=_stream(ROWS[:2]))
    trainer.train()
    assert trainer.state.global_step == 3
    assert trainer.state.epoch == 1.5  # 6 prompts read of a 4-prompt stream
    assert "eval_reward" in trainer.evaluate()


def test_a_stream_resumes_exactly(small_tiny, tmp_path):
    from transformers import TrainerCallback

    from aha.models.tiny import build_tiny

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(name, callbacks=(), resume=None):
        model, tok = build_tiny(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0
        )
        cfg = _cfg(tmp_path, name, max_steps=4, save_steps=2)
        trainer = GRPOTrainer(model, digits, cfg, _stream(ROWS[:6]), tok, callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")
    cut = run("cut", [StopAt2()])  # a pass is 3 batches of 2 prompts: checkpoint-2 is in the middle of one
    assert cut.state.global_step == 2
    resumed = run("cut", resume="auto")
    assert resumed.state.global_step == 4 and resumed.state.epoch == full.state.epoch
    want, got = _weights(full.model), _weights(resumed.model)
    for k in want:
        assert torch.equal(want[k], got[k]), k


# ------------------------------------------------------------------------------------------------ masked
def test_every_completion_truncated_and_masked_logs_zero_and_leaves_the_weights(small_tiny, tmp_path):
    model, tok = small_tiny
    cfg = _cfg(tmp_path, mask_truncated_completions=True, max_completion_length=2, max_steps=2)
    trainer = GRPOTrainer(model, digits, cfg, ROWS, tok)
    trainer.batches.eos = [len(tok) + 7]  # an end token the model never draws: every completion is truncated
    before = _weights(model)
    out = trainer.train()
    windows = trainer.state.log_history[:-1]
    assert [r["completions/clipped_ratio"] for r in windows] == [1.0, 1.0]
    assert [r["loss"] for r in windows] == [0.0, 0.0] and [r["grad_norm"] for r in windows] == [0.0, 0.0]
    assert out.training_loss == 0.0
    after = _weights(trainer.model)
    for k in before:
        assert torch.equal(before[k], after[k]), k


# ------------------------------------------------------------------------------------------------ ref sync
def test_sync_ref_model_mixes_the_policy_into_the_reference(small_tiny, tmp_path):
    from transformers import TrainerCallback

    model, tok = small_tiny
    snaps = {}

    class Snap(TrainerCallback):  # runs before the sync (a user callback comes first, as in TRL)
        def on_step_end(self, args, state, control, **kwargs):
            snaps[state.global_step] = (_weights(trainer.model), _weights(trainer.ref_model))

    cfg = _cfg(tmp_path, beta=0.1, sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.25)
    trainer = GRPOTrainer(model, digits, cfg, ROWS, tok, callbacks=[Snap()])
    start = _weights(trainer.ref_model)
    trainer.train()
    policy2, ref2 = snaps[2]
    _, ref3 = snaps[3]
    for k in start:
        assert torch.equal(snaps[1][1][k], start[k]) and torch.equal(ref2[k], start[k]), k  # no sync before step 2
        assert torch.allclose(ref3[k], 0.75 * start[k] + 0.25 * policy2[k], atol=1e-6), k
    assert any(not torch.equal(ref3[k], start[k]) for k in start)


def test_sync_ref_model_with_peft_is_refused_as_in_trl(small_tiny, tmp_path):
    from peft import LoraConfig

    model, tok = small_tiny
    cfg = _cfg(tmp_path, beta=0.1, sync_ref_model=True)
    with pytest.raises(ValueError, match="sync_ref_model=True with a PEFT model"):
        GRPOTrainer(model, digits, cfg, ROWS, tok, peft_config=LoraConfig(r=2, target_modules=["q_proj"]))


def test_datasets_dataset_works_as_train_and_eval(small_tiny, tmp_path):
    model, tok = small_tiny
    ds = Dataset.from_list(ROWS)
    trainer = GRPOTrainer(model, digits, _cfg(tmp_path, max_steps=1), ds, tok, eval_dataset=ds.select(range(2)))
    assert trainer.train().global_step == 1 and "eval_loss" in trainer.evaluate()
