"""Failures inside the loop: raising / non-finite rewards, and a NaN loss that must not corrupt the weights."""

import json
import math

import pytest
import torch

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.models.tiny import build_tiny
from aha.tasks import get_task
from aha.train import checkpoint


def _trainer(out, funcs, **kw):
    model, tok = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)
    base = dict(
        output_dir=str(out),
        learning_rate=3e-3,
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        save_steps=100,
        lr_scheduler_type="constant",
        seed=0,
        use_cpu=True,
    )
    base.update(kw)
    rows = get_task("arithmetic").rows("train", 16, seed=0)
    return GRPOTrainer(model, funcs, GRPOConfig(**base), rows, processing_class=tok)


def length(completions, **kw):
    return [float(len(completion_text(c))) for c in completions]


def test_raising_reward_names_function_and_sample(tmp_path):
    def picky(completions, **kw):
        if len(completions) > 1 or picky.seen == 5:
            picky.seen += len(completions) == 1
            raise ZeroDivisionError("division by zero in my parser")
        picky.seen += 1
        return [1.0]

    picky.seen = 0
    t = _trainer(tmp_path / "run", [length, picky])
    with pytest.raises(ValueError, match=r"'picky' raised on sample 5 .*ZeroDivisionError: division by zero"):
        t.train()


def test_skip_mode_counts_errors_and_continues(tmp_path):
    def sometimes(completions, **kw):  # the batch call fails, then every third sample alone
        sometimes.calls += 1
        if len(completions) > 1 or sometimes.calls % 3 == 0:
            raise RuntimeError("flaky")
        return [1.0] * len(completions)

    sometimes.calls = 0
    t = _trainer(tmp_path / "run", [length, sometimes], reward_errors="skip", max_steps=3)
    state = t.train()
    assert state.global_step == 3
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rewards/sometimes/errors"] > 0 for r in rows)
    assert "rewards/length/errors" in rows[0] and "rewards/length/nonfinite" in rows[0]


def test_skip_mode_marks_failing_samples_none(tmp_path):
    calls = []

    def odd_fails(completions, **kw):
        calls.append(len(completions))
        if len(completions) > 1:
            raise RuntimeError("batch")
        odd_fails.i += 1
        if odd_fails.i % 2:
            raise RuntimeError("odd")
        return [2.0]

    odd_fails.i = 0
    t = _trainer(tmp_path / "run", [odd_fails], reward_errors="skip")
    rollout = t.batches.generate_and_score(get_task("arithmetic").rows("train", 2, seed=0))
    col = rollout.rewards[:, 0]
    assert calls[0] == 8 and calls[1:] == [1] * 8
    assert torch.isnan(col[0::2]).all() and (col[1::2] == 2.0).all()
    assert rollout.info["rewards/odd_fails/errors"] == 4


def test_nonfinite_rewards_are_none_and_counted(tmp_path):
    def wild(completions, **kw):
        return [math.nan, math.inf, -math.inf, 1.0] * (len(completions) // 4)

    t = _trainer(tmp_path / "run", wild)
    rollout = t.batches.generate_and_score(get_task("arithmetic").rows("train", 2, seed=0))
    col = rollout.rewards[:, 0]
    assert torch.isnan(col).sum() == 6 and (col[3::4] == 1.0).all()
    assert rollout.info["rewards/wild/nonfinite"] == 6
    state = t.train()
    assert state.log_history[0]["rewards/wild/nonfinite"] == 6  # summed over the logging window, not averaged


def test_nan_loss_stops_and_keeps_last_good_state(tmp_path):
    ref = _trainer(tmp_path / "ref", length, max_steps=2)
    ref.model.forward = ref.model.forward  # a patched forward takes token_logps' plain path, as `t` below does
    ref.train()
    out = tmp_path / "run"
    t = _trainer(out, length, max_steps=4)
    forward = t.model.forward

    def poisoned(*args, **kwargs):
        result = forward(*args, **kwargs)
        if torch.is_grad_enabled() and t.state.global_step == 2:  # the training forward of step 3
            result.logits = result.logits * float("nan")
        return result

    t.model.forward = poisoned
    with pytest.raises(RuntimeError, match=r"non-finite loss in optimiser step 3.*checkpoint-2"):
        t.train()
    assert checkpoint.latest_checkpoint(out) == out / "checkpoint-2"
    for (name, a), b in zip(ref.model.state_dict().items(), t.model.state_dict().values()):
        assert torch.equal(a, b), name  # the weights were not touched by the bad step
    saved = _trainer(tmp_path / "x", length)
    checkpoint.load_weights(saved.model, out / "checkpoint-2")
    for (name, a), b in zip(ref.model.state_dict().items(), saved.model.state_dict().values()):
        assert torch.equal(a, b), name
