import pytest
import torch

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.grpo import compute_advantages, zero_std_groups
from aha.tasks import get_task
from aha.train.rollouts import concat_batches, select_groups

G = 4


def _rows(n=64):
    return get_task("arithmetic").rows("train", n, seed=0)


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-3,
        max_steps=2,
        num_generations=G,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,  # 16 completions = 4 prompts per generation batch
        max_completion_length=8,
        logging_steps=1,
        seed=0,
        use_cpu=True,
    )
    base.update(kw)
    return GRPOConfig(**base)


class HalfTied:
    """Constant reward for prompts with an even answer, a completion-dependent one for odd answers."""

    __name__ = "half_tied"

    def __init__(self):
        self.calls: list[list[str]] = []  # answers seen, one list (per prompt) per call

    def __call__(self, completions, answer, **kwargs):
        self.calls.append(answer[::G])
        return [
            0.5 if int(a) % 2 == 0 else sum(map(ord, completion_text(c))) / 1000 for c, a in zip(completions, answer)
        ]


def _tied(rollout):
    return zero_std_groups(rollout.rewards.sum(1), G)


def test_refills_batch_with_informative_groups(small_tiny, tmp_path):
    model, tok = small_tiny
    reward = HalfTied()
    trainer = GRPOTrainer(model, reward, _cfg(tmp_path, dynamic_sampling=True, max_resample_rounds=10), _rows(), tok)
    rollout = trainer.batches.sample_batch()
    b, info, rows = rollout.batch, rollout.info, rollout.rows
    assert len(reward.calls) > 1  # the first batch had tied groups: it was resampled
    seen = [a for call in reward.calls for a in call]
    assert len(rows) == 4 and all(int(r["answer"]) % 2 for r in rows)  # refilled, tied groups gone
    assert all(b[k].size(0) == 16 for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"))
    assert b["advantages"].view(4, G).abs().sum(1).gt(0).all()  # every kept group carries signal
    assert not _tied(rollout).any()
    # advantages are group-local: the concatenated batch holds exactly each kept group's own advantages
    assert torch.equal(b["advantages"], compute_advantages(rollout.rewards, G))
    assert info["dynamic_sampling/rounds"] == len(reward.calls) - 1
    assert info["dynamic_sampling/dropped_groups"] == sum(int(a) % 2 == 0 for a in seen)
    assert info["dynamic_sampling/kept_groups"] == 4
    # each new round asks only for the missing prompts
    kept = 0
    for call in reward.calls:
        assert len(call) == 4 - kept
        kept += sum(int(a) % 2 for a in call)
    # prompts/completions of the refilled batch are left/right padded consistently with their masks
    for ids, mask in zip(b["prompt_ids"], b["prompt_mask"]):
        assert torch.all(ids[mask == 0] == tok.pad_token_id)
        assert mask.tolist() == sorted(mask.tolist())  # left padding: 0s then 1s


def test_off_keeps_tied_groups(small_tiny, tmp_path):
    model, tok = small_tiny
    reward = HalfTied()
    trainer = GRPOTrainer(model, reward, _cfg(tmp_path), _rows(), tok)
    rollout = trainer.batches.sample_batch()
    assert len(reward.calls) == 1 and len(rollout.rows) == 4
    even = torch.tensor([int(r["answer"]) % 2 == 0 for r in rollout.rows])
    assert even.any()  # seed 0 draws at least one even answer in the first 4 prompts
    assert torch.equal(_tied(rollout), even)
    assert torch.all(rollout.batch["advantages"].view(4, G)[even] == 0)
    assert not any(k.startswith("dynamic_sampling/") for k in rollout.info)


def test_training_logs_counters_and_advantages_unchanged(small_tiny, tmp_path):
    model, tok = small_tiny
    cfg = _cfg(tmp_path, dynamic_sampling=True, max_resample_rounds=10, beta=0.04, num_iterations=2)
    trainer = GRPOTrainer(model, HalfTied(), cfg, _rows(), tok)
    state = trainer.train()
    assert state.global_step == 2
    for row in state.log_history[:-1]:  # the last row: the run's summary
        assert row["kl"] >= 0
    rollout_rows = [r for r in state.log_history if "reward" in r]  # μ = 2: one generation batch, two steps
    assert len(rollout_rows) == 1
    for row in rollout_rows:
        assert row["dynamic_sampling/kept_groups"] == 4
        assert row["dynamic_sampling/dropped_groups"] >= 0 and row["dynamic_sampling/rounds"] >= 0


def test_no_informative_group_skips_update_and_terminates(small_tiny, tmp_path):
    model, tok = small_tiny
    calls = []

    def constant(completions, **kwargs):
        calls.append(len(completions))
        return [1.0] * len(completions)

    cfg = _cfg(tmp_path, dynamic_sampling=True, max_resample_rounds=2, max_steps=3)
    trainer = GRPOTrainer(model, constant, cfg, _rows(), tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = trainer.train()
    assert state.global_step == 3  # each skipped batch uses up its step: training ends
    assert len(calls) == 3 * 3  # 3 batches × (1 + 2 resample rounds)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    windows = state.log_history[:-1]  # the last row: the run's summary
    assert [r["dynamic_sampling/kept_groups"] for r in windows] == [0, 0, 0]
    assert [r["dynamic_sampling/dropped_groups"] for r in windows] == [12, 12, 12]
    assert [r["dynamic_sampling/rounds"] for r in windows] == [2, 2, 2]
    assert "loss" not in state.log_history[0]


def test_partial_batch_still_steps(small_tiny, tmp_path):
    """max_resample_rounds=0: only the first round's informative groups; a short batch still makes one step."""
    model, tok = small_tiny
    trainer = GRPOTrainer(model, HalfTied(), _cfg(tmp_path, dynamic_sampling=True, max_resample_rounds=0), _rows(), tok)
    rollout = trainer.batches.sample_batch()
    kept = rollout.info["dynamic_sampling/kept_groups"]
    assert kept == 4 - rollout.info["dynamic_sampling/dropped_groups"] and kept < 4
    assert rollout.info["dynamic_sampling/rounds"] == 0
    before = [p.clone() for p in model.parameters()]
    state = trainer.train()
    assert state.global_step == 2 and any("grad_norm" in r for r in state.log_history)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_concat_pads_prompts_left_and_completions_right():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "completion_ids": torch.tensor([[7]]), "advantages": torch.ones(1)}
    a["prompt_mask"], a["completion_mask"] = torch.ones(1, 2), torch.ones(1, 1)
    b = {
        "prompt_ids": torch.tensor([[1, 2, 3]]),
        "completion_ids": torch.tensor([[4, 4, 4]]),
        "advantages": -torch.ones(1),
    }
    b["prompt_mask"], b["completion_mask"] = torch.ones(1, 3), torch.ones(1, 3)
    out = concat_batches([a, b], pad_id=0)
    assert out["prompt_ids"].tolist() == [[0, 5, 6], [1, 2, 3]]
    assert out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[7, 0, 0], [4, 4, 4]]
    assert out["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    kept = select_groups(out, torch.tensor([False, True]), 1)
    assert kept["advantages"].tolist() == [-1.0]


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_max_resample_rounds_validated(bad):
    with pytest.raises(ValueError, match="GRPOConfig.max_resample_rounds"):
        GRPOConfig(max_resample_rounds=bad)
