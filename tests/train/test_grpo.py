import json

import pytest
import torch

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.tasks import get_task


def digit_share(completions, **kwargs):
    """Fraction of digit characters: easy for a random model to learn to raise."""
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(sum(ch.isdigit() for ch in text) / max(1, len(text)))
    return out


def _rows(n=64):
    return get_task("arithmetic").rows("train", n, seed=0)


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=3e-3,
        max_steps=30,
        num_generations=8,
        per_device_train_batch_size=32,
        max_completion_length=12,
        logging_steps=5,
        seed=0,
        lr_scheduler_type="constant",
        use_cpu=True,
    )
    base.update(kw)
    return GRPOConfig(**base)


def test_reward_rises_end_to_end(small_tiny, tmp_path):
    model, tok = small_tiny
    trainer = GRPOTrainer(model, digit_share, _cfg(tmp_path), _rows(), processing_class=tok)
    state = trainer.train()
    rewards = [row["reward"] for row in state.log_history[:-1]]  # the last row: the run's summary
    assert state.global_step == 30
    assert rewards[-1] > rewards[0] + 0.1, rewards
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20, 25, 30]
    for key in (
        "loss",
        "reward",
        "reward_std",
        "rewards/digit_share/mean",
        "entropy",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "frac_reward_zero_std",
        "learning_rate",
        "step_time",
    ):
        assert key in lines[-1], key
    assert "kl" not in lines[-1]  # beta = 0: no reference model, no KL
    assert trainer.ref_model is None


def test_kl_iterations_and_accumulation(small_tiny, tmp_path):
    model, tok = small_tiny
    cfg = _cfg(
        tmp_path,
        max_steps=4,
        beta=0.04,
        num_iterations=2,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        steps_per_generation=4,
        logging_steps=1,
        loss_type="grpo",
    )
    assert cfg.generation_batch_size == 32
    trainer = GRPOTrainer(model, [digit_share], cfg, _rows(), processing_class=tok)
    before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    state = trainer.train()
    assert state.global_step == 4
    last = state.log_history[-2]  # the last window (the summary row follows it)
    assert last["kl"] >= 0.0
    # the reference model stays frozen while the policy moves
    for k, v in trainer.ref_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(p, trainer.ref_model.state_dict()[k]) for k, p in trainer.model.state_dict().items())


def test_masked_after_eos_and_rewards_see_columns(small_tiny, tmp_path):
    model, tok = small_tiny
    seen = {}

    def spy(prompts, completions, answer, completion_ids, **kwargs):
        seen["n"], seen["answer"], seen["ids"] = len(completions), answer, completion_ids
        return [0.0] * len(completions)

    trainer = GRPOTrainer(model, spy, _cfg(tmp_path, max_steps=1), _rows(8), processing_class=tok)
    rollout = trainer.batches.generate_and_score(_rows(4))
    b = rollout.batch
    assert seen["n"] == 32 and len(seen["answer"]) == 32
    assert seen["answer"][:8] == [seen["answer"][0]] * 8  # each prompt's columns repeated G times, contiguous
    eos = tok.eos_token_id
    for row, mask, ids in zip(b["completion_ids"].tolist(), b["completion_mask"].tolist(), seen["ids"]):
        if eos in row:
            cut = row.index(eos) + 1
            assert mask == [1] * cut + [0] * (len(row) - cut)
            assert ids == row[:cut]
        else:
            assert all(mask)
    assert torch.all(b["advantages"] == 0)  # all rewards tie -> no signal


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda completions, **kw: [1.0], "must return a list of 32"),
        (lambda completions, **kw: ["x"] * len(completions), "non-numeric"),
    ],
)
def test_bad_reward_function_is_named(small_tiny, tmp_path, bad, match):
    model, tok = small_tiny
    bad.__name__ = "my_reward"
    trainer = GRPOTrainer(model, bad, _cfg(tmp_path, max_steps=1), _rows(8), processing_class=tok)
    with pytest.raises(ValueError, match=f"my_reward.*{match}|{match}.*my_reward"):
        trainer.batches.generate_and_score(_rows(4))


def test_all_nan_reward_is_refused_by_name_in_training(small_tiny, tmp_path):
    model, tok = small_tiny

    def always_nan(completions, **kw):
        return [float("nan")] * len(completions)

    trainer = GRPOTrainer(model, [digit_share, always_nan], _cfg(tmp_path, max_steps=1), _rows(8), processing_class=tok)
    with pytest.raises(ValueError, match="^reward function 'always_nan' returned NaN or inf for all 32 samples"):
        trainer.batches.generate_and_score(_rows(4))


def test_a_missing_model_path_or_an_unknown_reward_name_is_one_clear_error(small_tiny, tmp_path):
    model, tok = small_tiny
    with pytest.raises(FileNotFoundError, match=r"^some/missing/path: no such directory \(and not a Hub id\)$"):
        GRPOTrainer("some/missing/path", digit_share, _cfg(tmp_path), _rows(8))
    with pytest.raises(ValueError, match="^unknown reward 'x'; built-in rewards are: .*correctness"):
        GRPOTrainer(model, ["x"], _cfg(tmp_path), _rows(8), processing_class=tok)
    trainer = GRPOTrainer(model, ["format", digit_share], _cfg(tmp_path), _rows(8), processing_class=tok)
    assert [f.__name__ for f in trainer.reward_funcs] == ["format", "digit_share"]  # a built-in by name


def test_dataset_errors(small_tiny, tmp_path):
    model, tok = small_tiny
    with pytest.raises(ValueError, match="empty"):
        GRPOTrainer(model, digit_share, _cfg(tmp_path), [], processing_class=tok)
    with pytest.raises(ValueError, match="'prompt' column"):
        GRPOTrainer(model, digit_share, _cfg(tmp_path), [{"question": "1+1"}], processing_class=tok)
