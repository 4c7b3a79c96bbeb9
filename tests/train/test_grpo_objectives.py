"""GRPOTrainer honours TRL 1.16's other objective fields: the loss types cispo/sapo/luspo/vespo and their
parameters, the entropy bonus (static and adaptive, checkpointed), multi_objective_aggregation and
off_policy_mask_threshold. Each compute_loss is checked against aha.grpo on the same micro-batch (whose maths
tests/grpo/test_trl_parity.py proves equal to TRL's) and shown to differ from the run without the option."""

import math

import pytest
import torch

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.grpo import compute_advantages, entropy_bonus, policy_loss, top_entropy_mask
from aha.tasks import get_task
from aha.train.forward import token_logps

G = 4


def digit_share(completions, **kwargs):
    return [sum(ch.isdigit() for ch in completion_text(c)) / max(1, len(completion_text(c))) for c in completions]


def length_share(completions, **kwargs):
    return [len(completion_text(c)) / 32 for c in completions]


def _rows(n=16):
    return get_task("arithmetic").rows("train", n, seed=0)


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=3e-3,
        max_steps=2,
        num_generations=G,
        per_device_train_batch_size=8,
        max_completion_length=8,
        logging_steps=1,
        seed=0,
        lr_scheduler_type="constant",
        use_cpu=True,
    )
    return GRPOConfig(**(base | kw))


def _micro_batch(trainer, seed=0):
    """One scored micro-batch, old log-probs pushed off the current ones (as after some updates), and the
    completions' rewards spread so that advantages of both signs occur."""
    rollout = trainer.batches.generate_and_score(_rows(2))
    mb = dict(rollout.batch)
    g = torch.Generator().manual_seed(seed)
    n, t = mb["completion_ids"].shape
    with torch.no_grad():
        current = trainer.logps(mb, reference=False)
    shift = torch.linspace(-0.5, 0.5, n).unsqueeze(1)  # rows drift both ways
    mb["old_logps"] = current - shift - 0.1 * torch.randn(n, t, generator=g)
    mb["advantages"] = torch.linspace(-1.0, 1.0, n)[torch.randperm(n, generator=g)]
    return mb


def _expected(trainer, mb, num_items, **overrides):
    """The micro-batch's loss from aha.grpo directly, with the config's fields (or `overrides`)."""
    a = trainer.args
    logps, entropy = token_logps(
        trainer.model,
        mb["prompt_ids"],
        mb["prompt_mask"],
        mb["completion_ids"],
        mb["completion_mask"],
        a.temperature,
        True,
    )
    opts = (
        dict(
            loss_type=a.loss_type,
            epsilon=a.epsilon,
            epsilon_high=a.epsilon_high,
            delta=a.delta,
            beta=a.beta,
            importance_sampling_level=a.importance_sampling_level,
            max_completion_length=a.max_completion_length,
            num_items=num_items,
            sapo_temperature_pos=a.sapo_temperature_pos,
            sapo_temperature_neg=a.sapo_temperature_neg,
            vespo_k_pos=a.vespo_k_pos,
            vespo_lambda_pos=a.vespo_lambda_pos,
            vespo_k_neg=a.vespo_k_neg,
            vespo_lambda_neg=a.vespo_lambda_neg,
            off_policy_mask_threshold=a.off_policy_mask_threshold,
        )
        | overrides
    )
    mask = mb["completion_mask"]
    loss, _ = policy_loss(logps, mb["old_logps"], mb.get("ref_logps"), mb["advantages"], mask, **opts)
    return loss.item(), entropy, mask


OPTION_CASES = [
    (dict(loss_type="cispo", epsilon_high=1.2), dict(epsilon_high=None)),
    (dict(loss_type="sapo", sapo_temperature_pos=0.5, sapo_temperature_neg=2.0), dict(sapo_temperature_pos=1.0)),
    (dict(loss_type="luspo", importance_sampling_level="sequence"), dict(loss_type="grpo")),
    (dict(loss_type="vespo", vespo_k_pos=1.0, vespo_lambda_neg=4.0), dict(vespo_k_pos=2.0, vespo_lambda_neg=2.0)),
    (dict(loss_type="dapo", num_iterations=2, off_policy_mask_threshold=0.1), dict(off_policy_mask_threshold=None)),
]


@pytest.mark.parametrize("fields, without", OPTION_CASES, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
def test_compute_loss_passes_each_option(small_tiny, tmp_path, fields, without):
    model, tok = small_tiny
    trainer = GRPOTrainer(model, digit_share, _cfg(tmp_path, **fields), _rows(), processing_class=tok)
    mb = _micro_batch(trainer)
    loss, metrics = trainer.compute_loss(mb, 20.0)
    expected, _, _ = _expected(trainer, mb, 20.0)
    other, _, _ = _expected(trainer, mb, 20.0, **without)
    scale = 1 if trainer.args.loss_type in ("dapo", "cispo", "vespo") else trainer.args.gradient_accumulation_steps
    assert loss.item() * scale == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected != pytest.approx(other, rel=1e-4, abs=1e-6)  # the option changes this micro-batch's loss
    if fields["loss_type"] == "cispo":
        assert "cispo_clip_ratio" in metrics
    if fields["loss_type"] == "vespo":
        assert "vespo/phi_seq_mean" in metrics


@pytest.mark.parametrize("quantile", [1.0, 0.5])
def test_entropy_bonus_in_compute_loss(small_tiny, tmp_path, quantile):
    """loss = policy loss - entropy_coef × mean entropy (over the policy term's tokens) / accumulation steps,
    and the bonus has a gradient (the entropy's, through the fast lm_head)."""
    model, tok = small_tiny
    cfg = _cfg(
        tmp_path, loss_type="grpo", entropy_coef=0.5, gradient_accumulation_steps=2, top_entropy_quantile=quantile
    )
    trainer = GRPOTrainer(model, digit_share, cfg, _rows(), processing_class=tok)
    mb = _micro_batch(trainer)
    loss, metrics = trainer.compute_loss(mb, 20.0)
    loss.backward()
    with_bonus = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad(set_to_none=True)

    _, entropy, mask = _expected(trainer, mb, 20.0)
    ent_mask = top_entropy_mask(entropy, mask, quantile) if quantile < 1 else None
    effective = mask if ent_mask is None else ent_mask
    logps, _ = token_logps(
        trainer.model, mb["prompt_ids"], mb["prompt_mask"], mb["completion_ids"], mb["completion_mask"], cfg.temperature
    )
    policy, _ = policy_loss(
        logps, mb["old_logps"], None, mb["advantages"], mask, loss_type="grpo", entropy_mask=ent_mask
    )
    h = entropy_bonus(entropy, effective).item()
    assert h > 0.5
    assert metrics["policy_loss"] == pytest.approx(policy.item(), rel=1e-5, abs=1e-7)
    assert metrics["loss"] == pytest.approx(policy.item() - 0.5 * h, rel=1e-5, abs=1e-7)
    assert loss.item() == pytest.approx((policy.item() - 0.5 * h) / 2, rel=1e-5, abs=1e-7)
    (policy / 2).backward()
    without_bonus = [p.grad for p in trainer.model.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(with_bonus, without_bonus))  # the bonus pushes the weights


def test_adaptive_entropy_moves_the_coefficient_and_resumes(small_tiny, tmp_path):
    model, tok = small_tiny
    fields = dict(
        use_adaptive_entropy=True, entropy_coef=0.0, entropy_coef_delta=0.01, entropy_target=100.0, save_steps=2
    )
    state = GRPOTrainer(model, digit_share, _cfg(tmp_path, **fields), _rows(), processing_class=tok).train()
    coefs = [row["entropy_coef"] for row in steps(state)]
    assert coefs == pytest.approx([0.01, 0.02])  # entropy (a few nats) <= target: up by delta each step
    # first step: last entropy unknown, no bonus (loss = policy_loss); then the bonus acts
    first, second = steps(state)
    assert first["loss"] == pytest.approx(first["policy_loss"])
    assert second["loss"] < second["policy_loss"]

    resumed = GRPOTrainer(model, digit_share, _cfg(tmp_path, **fields, max_steps=3), _rows(), processing_class=tok)
    state = resumed.train(resume_from_checkpoint="auto")
    assert steps(state)[-1]["entropy_coef"] == pytest.approx(0.03)  # the coefficient came back from step 2
    assert resumed.entropy.last_entropy < 100.0

    fields |= dict(entropy_target=0.01, entropy_coef=0.1, output_dir=str(tmp_path / "above"))
    state = GRPOTrainer(model, digit_share, _cfg(tmp_path, **fields), _rows(), processing_class=tok).train()
    assert [row["entropy_coef"] for row in steps(state)] == pytest.approx([0.09, 0.08])
    assert all(row["loss"] == pytest.approx(row["policy_loss"]) for row in steps(state))  # never applied


def steps(state) -> list[dict]:
    """The training steps' rows of log_history (not the summary row transformers' Trainer ends it with)."""
    return [row for row in state.log_history if "entropy_coef" in row]


def test_multi_objective_aggregation_in_rollouts(small_tiny, tmp_path):
    model, tok = small_tiny
    cfg = _cfg(tmp_path, multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5])
    trainer = GRPOTrainer(model, [digit_share, length_share], cfg, _rows(), processing_class=tok)
    rollout = trainer.batches.generate_and_score(_rows(4))
    advantages = rollout.batch["advantages"]
    expected = compute_advantages(
        rollout.rewards, G, reward_weights=[1.0, 0.5], multi_objective_aggregation="normalize_then_sum"
    )
    summed = compute_advantages(rollout.rewards, G, reward_weights=[1.0, 0.5])
    torch.testing.assert_close(advantages, expected)
    assert not torch.allclose(advantages, summed, atol=1e-3)
    assert advantages.ne(0).any() and math.isclose(advantages.mean().item(), 0.0, abs_tol=1e-5)  # batch-centred


@pytest.mark.parametrize("loss_type", ["cispo", "sapo", "luspo", "vespo"])
def test_new_loss_types_train(small_tiny, tmp_path, loss_type):
    model, tok = small_tiny
    cfg = _cfg(tmp_path, loss_type=loss_type, num_iterations=2, beta=0.04, off_policy_mask_threshold=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = GRPOTrainer(model, digit_share, cfg, _rows(), processing_class=tok).train()
    assert state.global_step == 2
    assert all(math.isfinite(row["loss"]) for row in state.log_history if "train_runtime" not in row)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
