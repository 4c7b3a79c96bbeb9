"""The GRPO maths of aha.grpo.core, on the worked numbers of the Hugging Face LLM course (chapter 12, §3a)
and on small hand-checkable cases. Parity with TRL is in test_trl_parity.py."""

from __future__ import annotations

import math

import pytest
import torch

from aha.grpo import (
    adaptive_entropy_coef,
    applied_entropy_coef,
    clip_ratio,
    completion_mask_after_eos,
    compute_advantages,
    entropy_from_logits,
    group_rewards,
    k3_kl,
    off_policy_mask,
    policy_loss,
    selective_log_softmax,
    vespo_weights,
    zero_std_groups,
)

NAN = float("nan")


# --------------------------------------------------------------------------------------- advantages
def test_course_advantages_two_groups():
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 1])  # two prompts, G = 4
    a = compute_advantages(rewards, 4)
    expected = torch.tensor([1, -1, -1, 1, -1, -1, 1, 1]) * 0.866
    torch.testing.assert_close(a, expected, rtol=0, atol=5e-4)


def test_course_advantages_four_of_eight_correct():
    a = compute_advantages(torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]), 8)
    # The course rounds to ±0.94; Bessel-corrected std is 0.5345, so 0.5 / 0.5346 = 0.935.
    assert a[:4].tolist() == pytest.approx([0.94] * 4, abs=0.01)
    assert a[4:].tolist() == pytest.approx([-0.94] * 4, abs=0.01)
    assert a[0].item() == pytest.approx(0.5 / (math.sqrt(8 * 0.25 / 7) + 1e-4), rel=1e-6)


def test_tied_group_has_zero_advantage():
    a = compute_advantages(torch.tensor([0.5, 0.5, 0.5, 1.0, 0.0, 0.0]), 3)
    assert a[:3].eq(0).all() and a[3] > 0 and a[4] < 0
    assert zero_std_groups(torch.tensor([0.5, 0.5, 0.5, 1.0, 0.0, 0.0]), 3).tolist() == [True, False]


def test_scale_rewards_batch_and_none():
    r = torch.tensor([1.0, 0.0, 3.0, 1.0, 5.0, 2.0])  # G = 2: group means 0.5, 2, 3.5
    centred = torch.tensor([0.5, -0.5, 1.0, -1.0, 1.5, -1.5])
    torch.testing.assert_close(compute_advantages(r, 2, scale_rewards="none"), centred)
    torch.testing.assert_close(compute_advantages(r, 2, scale_rewards=False), centred)
    torch.testing.assert_close(compute_advantages(r, 2, scale_rewards="batch"), centred / (r.std() + 1e-4))
    group_std = r.view(3, 2).std(dim=1).repeat_interleave(2)
    torch.testing.assert_close(compute_advantages(r, 2, scale_rewards="group"), centred / (group_std + 1e-4))
    torch.testing.assert_close(compute_advantages(r, 2, scale_rewards=True), centred / (group_std + 1e-4))


def test_group_rewards_weighted_nansum():
    rewards = torch.tensor([[1.0, NAN], [NAN, 2.0], [3.0, 1.0], [NAN, NAN]])
    total, applicable = group_rewards(rewards, [2.0, 0.5])
    torch.testing.assert_close(total, torch.tensor([2.0, 1.0, 6.5, 0.0]))
    assert applicable.tolist() == [True, True, True, False]


def test_nan_rewards_advantages():
    rewards = torch.tensor(
        [[1.0, NAN], [NAN, 2.0], [3.0, 1.0], [NAN, NAN]]  # group 0: totals 2, 1, 6.5 and one unscorable row
        + [[0.0, 0.0], [1.0, NAN], [NAN, 4.0], [2.0, 2.0]]  # group 1: totals 0, 2, 2, 5
    )
    a = compute_advantages(rewards, 4, reward_weights=[2.0, 0.5])
    assert a[3] == 0  # every function NaN -> advantage 0 ...
    scorable = torch.tensor([2.0, 1.0, 6.5])  # ... and left out of its group's baseline
    torch.testing.assert_close(a[:3], (scorable - scorable.mean()) / (scorable.std() + 1e-4))
    torch.testing.assert_close(a[4:], compute_advantages(torch.tensor([0.0, 2.0, 2.0, 5.0]), 4))


def test_group_with_single_scorable_row_gets_zero():
    rewards = torch.tensor([[NAN], [NAN], [3.0], [1.0], [2.0], [6.0]])  # G = 3
    for scale in ("group", "batch", "none"):
        a = compute_advantages(rewards, 3, scale_rewards=scale)
        assert a[:3].eq(0).all(), scale
        assert a[3:].ne(0).all(), scale


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_generations=1), "num_generations"),
        (dict(num_generations=4), "groups of 4"),
        (dict(num_generations=2, scale_rewards="std"), "scale_rewards.*'std'"),
        (dict(num_generations=2, reward_weights=[1.0, 2.0]), "reward_weights"),
    ],
)
def test_compute_advantages_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]), **kwargs)


# --------------------------------------------------------------------------------------- ratio, clipping, KL
def test_course_clip_ratio():
    ratio = torch.tensor([1.8, 0.4, 1.0, 1.1])
    torch.testing.assert_close(clip_ratio(ratio, 0.2, 0.2), torch.tensor([1.2, 0.8, 1.0, 1.1]))
    torch.testing.assert_close(clip_ratio(ratio, 0.2, 0.28), torch.tensor([1.28, 0.8, 1.0, 1.1]))


def test_clipped_token_has_no_gradient():
    # Three one-token completions, ratios 1.8, 1.8, 1.0; advantages +1, -1, +1.
    logps = torch.tensor([[-1.0], [-1.0], [-1.0]], requires_grad=True)
    old = logps.detach() - torch.tensor([[math.log(1.8)], [math.log(1.8)], [0.0]])
    loss, metrics = policy_loss(logps, old, None, torch.tensor([1.0, -1.0, 1.0]), torch.ones(3, 1), epsilon=0.2)
    loss.backward()
    assert logps.grad[0, 0] == 0  # ρ = 1.8 > 1.2 with A > 0: clipped, the gradient stops
    assert logps.grad[1, 0] != 0  # A < 0: the pessimistic bound keeps the unclipped ρ·A
    assert logps.grad[2, 0] != 0  # inside the trust region
    assert metrics["clip_ratio/high_mean"] == pytest.approx(1 / 3)
    assert metrics["clip_ratio/low_mean"] == 0
    assert loss.item() == pytest.approx(-(1.2 - 1.8 + 1.0) / 3, rel=1e-6)  # dapo: sum / tokens


def test_delta_caps_the_unclipped_ratio():
    logps = torch.tensor([[-1.0]], requires_grad=True)
    old = logps.detach() - math.log(3.0)  # ρ = 3, A < 0: unclipped branch, capped at delta
    loss, _ = policy_loss(logps, old, None, torch.tensor([-1.0]), torch.ones(1, 1), delta=2.0)
    assert loss.item() == pytest.approx(2.0, rel=1e-6)
    loss.backward()
    assert logps.grad.item() == 0


def test_k3_kl_non_negative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    logps, ref = -5 * torch.rand(64, 16, generator=g), -5 * torch.rand(64, 16, generator=g)
    kl = k3_kl(logps, ref)
    assert kl.shape == logps.shape and kl.min() >= 0 and kl.max() > 0
    assert k3_kl(logps, logps).eq(0).all()
    assert k3_kl(torch.tensor(0.0), torch.tensor(1.0)).item() == pytest.approx(math.e - 2)


def test_loss_aggregations():
    # On-policy (ratio 1), no KL: L_t = -A. Row 0 has 2 tokens with A = 1, row 1 one token with A = -3.
    logps = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -3.0])

    def loss(**kw):
        return policy_loss(logps, None, None, adv, mask, **kw)[0].item()

    assert loss(loss_type="grpo") == pytest.approx((-1 + 3) / 2)  # per-sequence means, then mean
    assert loss(loss_type="bnpo") == pytest.approx((-2 + 3) / 3)  # over all tokens
    assert loss(loss_type="dr_grpo", max_completion_length=4) == pytest.approx((-2 + 3) / (2 * 4))
    assert loss(loss_type="dr_grpo") == pytest.approx((-2 + 3) / (2 * 3))  # defaults to the padded width
    assert loss(loss_type="dapo", num_items=10) == pytest.approx((-2 + 3) / 10)
    assert loss(loss_type="dapo") == pytest.approx((-2 + 3) / 3)  # defaults to this batch's tokens


def test_on_policy_gradient_flows_and_kl_metric():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0]])
    loss, metrics = policy_loss(logps, None, ref, torch.tensor([0.5]), torch.ones(1, 2), beta=0.1)
    loss.backward()
    assert logps.grad.ne(0).all()
    assert metrics["kl"] == pytest.approx((math.exp(-0.5) + 0.5 - 1) / 2, rel=1e-6)
    assert metrics["ratio_mean"] == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="ppo"), "loss_type 'ppo'"),
        (dict(importance_sampling_level="batch"), "importance_sampling_level.*'batch'"),
        (dict(beta=0.04), "ref_logps"),
    ],
)
def test_policy_loss_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        policy_loss(torch.zeros(2, 3), None, None, torch.ones(2), torch.ones(2, 3), **kwargs)


# --------------------------------------------------------------------------------------- other loss types
def test_sapo_on_policy_gradient_is_ppos():
    """At ρ = 1 SAPO's gate has PPO's gradient: d/dρ (4/τ) σ(τ (ρ - 1)) = 1, whatever τ."""
    adv = torch.tensor([1.0, -0.5])
    grads = {}
    for loss_type, kw in (("grpo", {}), ("sapo", dict(sapo_temperature_pos=0.3, sapo_temperature_neg=3.0))):
        logps = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
        policy_loss(logps, None, None, adv, torch.ones(2, 2), loss_type=loss_type, **kw)[0].backward()
        grads[loss_type] = logps.grad
    torch.testing.assert_close(grads["sapo"], grads["grpo"])


def test_cispo_caps_the_weight_not_the_gradient():
    """CISPO: -sg(min(ρ, ε_high)) · A · logp. A token far above the cap keeps a gradient (ε_high · A), unlike PPO's."""
    logps = torch.tensor([[-1.0]], requires_grad=True)
    old = logps.detach() - math.log(3.0)  # ρ = 3
    loss, metrics = policy_loss(
        logps, old, None, torch.tensor([2.0]), torch.ones(1, 1), loss_type="cispo", epsilon_high=1.5
    )
    loss.backward()
    assert loss.item() == pytest.approx(-1.5 * 2.0 * -1.0)
    assert logps.grad.item() == pytest.approx(-1.5 * 2.0)
    assert metrics["cispo_clip_ratio"] == 1.0


def test_luspo_weighs_each_sequence_by_its_length():
    logps = torch.zeros(2, 3)  # on-policy: L_t = -A
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, _ = policy_loss(logps, None, None, torch.tensor([1.0, 1.0]), mask, loss_type="luspo")
    assert loss.item() == pytest.approx(-(3 + 1) / 2)  # GSPO's per-sequence loss × its length, then the mean


def test_vespo_gamma_weights():
    """φ(w) = e^λ w^k e^(-λw): 1 on-policy, peaked at w = k/λ, the (k, λ) pair chosen by the advantage's sign."""
    mask = torch.ones(3, 2)
    log_ratio = torch.tensor([[0.0, 0.0], [0.2, 0.3], [0.2, 0.3]])  # w = 1, e^0.5, e^0.5
    phi = vespo_weights(torch.tensor([1.0, 1.0, -1.0]), log_ratio, mask, k_pos=2.0, lambda_pos=3.0, k_neg=1.0)
    w = math.exp(0.5)
    expected = [1.0, math.exp(3.0) * w**2 * math.exp(-3.0 * w), math.exp(2.0) * w * math.exp(-2.0 * w)]
    torch.testing.assert_close(phi.squeeze(1), torch.tensor(expected))
    # token-level sampler weights multiply w: e^-0.25 per token on row 1 cancel its drift (w = 1, φ = 1)
    sw = torch.tensor([[1.0, 1.0], [math.exp(-0.25), math.exp(-0.25)], [1.0, 1.0]])
    phi = vespo_weights(torch.tensor([1.0, 1.0, -1.0]), log_ratio, mask, sw, k_pos=2.0, lambda_pos=3.0, k_neg=1.0)
    assert phi[1].item() == pytest.approx(1.0)


def test_off_policy_mask_drops_only_drifted_negative_sequences():
    logps = torch.zeros(4, 2)
    behaviour = torch.tensor([[0.8, 0.6], [0.8, 0.6], [0.1, 0.1], [float("nan"), 0.2]])  # mean KL .7, .7, .1, .1
    adv = torch.tensor([-1.0, 1.0, -1.0, -1.0])
    keep = off_policy_mask(adv, logps, behaviour, torch.ones(4, 2), 0.5)
    assert keep.squeeze(1).tolist() == [0.0, 1.0, 1.0, 1.0]  # A >= 0 always stays; NaN counts as no drift


def test_entropy_controller_steps():
    step = dict(target=0.2, delta=0.005, coef_min=0.0, coef_max=1.0)
    assert adaptive_entropy_coef(0.0, 0.1, **step) == pytest.approx(0.005)  # at or below target: up
    assert adaptive_entropy_coef(0.0, 0.3, **step) == 0.0  # above: down, floored
    assert adaptive_entropy_coef(0.999, 0.0, **step) == 1.0  # capped
    assert applied_entropy_coef(0.3, math.inf, 0.2) == 0.0 and applied_entropy_coef(0.3, 0.2, 0.2) == 0.3


def test_normalize_then_sum_standardises_each_reward_first():
    """GDPO: a reward on a 100× larger scale no longer drowns the other one."""
    small = torch.tensor([1.0, 0.0, 0.0, 1.0])
    big = torch.tensor([0.0, 100.0, 50.0, 50.0])
    rewards = torch.stack([small, big], 1)  # (4, 2): one group of 4
    z = lambda r: (r - r.mean()) / (r.std() + 1e-4)  # noqa: E731
    total = z(small) + z(big)
    expected = (total - total.mean()) / (total.std() + 1e-4)
    ours = compute_advantages(rewards, 4, multi_objective_aggregation="normalize_then_sum")
    torch.testing.assert_close(ours, expected)
    summed = compute_advantages(rewards, 4)
    assert summed.argmax() == 1 and ours.argmax() != 1  # summing first: the big reward decides alone
    with pytest.raises(ValueError, match="scale_rewards='none' does not apply"):
        compute_advantages(rewards, 4, scale_rewards="none", multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="multi_objective_aggregation must be one of"):
        compute_advantages(rewards, 4, multi_objective_aggregation="mean")


# --------------------------------------------------------------------------------------- log-probs
def test_completion_mask_after_eos():
    eos = 9
    ids = torch.tensor(
        [
            [5, 6, eos, 7, eos],  # EOS kept, everything after masked
            [eos, 1, 2, 3, 4],  # EOS first
            [1, 2, 3, 4, 5],  # no EOS: fully kept
            [1, 2, 3, 4, eos],
        ]
    )
    expected = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert completion_mask_after_eos(ids, eos).tolist() == expected
    # several EOS ids: the first of any of them ends the completion
    assert completion_mask_after_eos(torch.tensor([[1, 8, 9, 2]]), [9, 8]).tolist() == [[1, 1, 0, 0]]


def test_selective_log_softmax_matches_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    index = torch.randint(0, 11, (3, 5), generator=g)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    for chunk in (4, 64):  # 15 rows: several chunks, one chunk
        torch.testing.assert_close(selective_log_softmax(logits, index, chunk=chunk), expected)


def test_entropy_from_logits_matches_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 13, generator=g) * 3
    p = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(entropy_from_logits(logits, chunk=5), -(p * p.log()).sum(-1))
    uniform = entropy_from_logits(torch.zeros(1, 1, 13))
    assert uniform.item() == pytest.approx(math.log(13), rel=1e-6)
