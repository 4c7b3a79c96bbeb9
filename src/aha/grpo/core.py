"""GRPO, the maths — read this file top to bottom next to the course's §3a.

For each prompt q we sample a *group* of G completions o_1..o_G from the policy that generated them
(π_old) and score each with rewards r_i. Then:

1. Advantage (group-relative, no critic)::

       A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + 1e-4)

   e.g. rewards [1, 0, 0, 1] -> A = [+0.866, -0.866, -0.866, +0.866].

2. Probability ratio, per completion token t::

       ρ_t = π_θ(o_t | q, o_<t) / π_old(o_t | q, o_<t) = exp(logp_t - old_logp_t)

   (GSPO, ``importance_sampling_level="sequence"``: one ratio per completion, the geometric mean
   exp(mean_t(logp_t - old_logp_t))).

3. Clipped surrogate (PPO's pessimistic bound)::

       L_t = -min(ρ_t · A, clip(ρ_t, 1 - ε_low, 1 + ε_high) · A)

   e.g. ε = 0.2: ρ = 1.8 -> 1.2 and ρ = 0.4 -> 0.8.

4. KL penalty against a frozen reference policy, the k3 estimator (always >= 0, 0 when equal)::

       KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1,     L_t += β · KL_t

5. Aggregation of L_t over the completion tokens (``loss_type``): ``grpo`` averages per sequence
   then over sequences; ``bnpo`` averages over all tokens of the micro-batch; ``dr_grpo`` divides
   the sum by B × max_completion_length; ``dapo`` divides by the number of completion tokens in
   the whole generation batch (``num_items``), so every token weighs the same whatever the batching.

6. Other policy terms in place of step 3 (``loss_type``; sg = stop-gradient)::

       cispo  L_t = -sg(min(ρ_t, ε_high)) · A · logp_t             (MiniMax-M1; dapo's aggregation)
       sapo   L_t = -(4/τ) · σ(τ (ρ_t - 1)) · A,  τ = τ_pos if A > 0 else τ_neg   (grpo's aggregation)
       luspo  L_t as step 3, summed per sequence, then averaged over sequences   (GSPO × length)
       vespo  L_t = -sg(φ(w)) · A · logp_t,  φ(w) = e^λ w^k e^(-λ w),  w = Π_t ρ_t   (dapo's aggregation)

   e.g. sapo at ρ = 1: d/dρ (4/τ) σ(τ (ρ - 1)) = 4 σ'(0) = 1, the same gradient as PPO's on-policy.
   VESPO's (k, λ) pair is (vespo_k_pos, vespo_lambda_pos) when A >= 0, else the _neg pair; φ(1) = 1.

7. Extras: an entropy bonus ``- entropy_coef · mean_t H_t`` (:func:`entropy_bonus`, adapted by
   :func:`adaptive_entropy_coef`), and DeepSeek-V3.2's off-policy sequence mask (:func:`off_policy_mask`):
   a sequence with A < 0 whose mean log(π_old/π_θ) exceeds a threshold is dropped from the policy term.

Everything here is a pure function of tensors. Shapes: B completions (= prompts × G), T tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

ADV_EPS = 1e-4  # as TRL: A = (r - mean) / (std + 1e-4)
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")  # how K rewards make one advantage


# --------------------------------------------------------------------------------------- advantages
def group_rewards(
    rewards: torch.Tensor, reward_weights: Sequence[float] | torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted NaN-aware sum of K reward functions.

    rewards: (N,) or (N, K); NaN means "this function does not apply to this sample".
    Returns (total (N,), applicable (N,) bool: at least one function gave a number).
    """
    r = rewards.float()
    if r.dim() == 1:
        r = r.unsqueeze(1)  # (N, 1)
    if reward_weights is None:
        w = torch.ones(r.size(1), dtype=r.dtype, device=r.device)
    else:
        w = torch.as_tensor(reward_weights, dtype=r.dtype, device=r.device)
        if w.numel() != r.size(1):
            raise ValueError(f"reward_weights has {w.numel()} entries but there are {r.size(1)} reward functions")
    applicable = ~torch.isnan(r).all(dim=1)  # (N,)
    total = (r * w.unsqueeze(0)).nansum(dim=1)  # (N,)
    return total, applicable


def compute_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    *,
    scale_rewards: str | bool = "group",
    reward_weights: Sequence[float] | torch.Tensor | None = None,
    multi_objective_aggregation: str = "sum_then_normalize",
) -> torch.Tensor:
    """Group-relative advantages, one per completion.

    rewards: (N,) or (N, K), N = prompts × num_generations, completions of one prompt contiguous.
    scale_rewards: "group" divides by the group's std (+1e-4), "batch" by the whole batch's std,
    "none" not at all (Dr. GRPO). Std is Bessel-corrected, as TRL's.
    multi_objective_aggregation (how K reward functions combine, as TRL): "sum_then_normalize" weighs and sums
    them, then centres and scales as above; "normalize_then_sum" (GDPO) first standardises each function within
    each group, (r_k - mean_k) / (std_k + 1e-4), then weighs and sums those, then standardises the sums over the
    whole batch. The latter has its own scaling: it takes only scale_rewards="group" (the default).
    Returns A: (N,). Rows where no reward function applies are left out of the mean and std and get
    A = 0, as TRL; so does a group with a single scorable row when scaling by the group's std.
    """
    if scale_rewards is True:
        scale_rewards = "group"
    elif scale_rewards is False:
        scale_rewards = "none"
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    if multi_objective_aggregation not in MULTI_OBJECTIVE_AGGREGATIONS:
        raise ValueError(
            f"multi_objective_aggregation must be one of {', '.join(MULTI_OBJECTIVE_AGGREGATIONS)}, "
            f"got {multi_objective_aggregation!r}"
        )
    if multi_objective_aggregation == "normalize_then_sum" and scale_rewards != "group":
        raise ValueError(
            f"scale_rewards={scale_rewards!r} does not apply with multi_objective_aggregation='normalize_then_sum' "
            "(it standardises each reward per group, then the sums over the batch): leave scale_rewards='group'"
        )
    if num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 for group-relative advantages, got {num_generations}")
    if rewards.size(0) % num_generations:
        raise ValueError(f"{rewards.size(0)} rewards do not split into groups of {num_generations}")
    if multi_objective_aggregation == "normalize_then_sum":
        r = rewards.float().reshape(rewards.size(0), -1)  # (N, K)
        grouped = r.view(-1, num_generations, r.size(1))  # (P, G, K)
        z = (grouped - grouped.nanmean(dim=1, keepdim=True)) / (_nanstd(grouped, dim=1).unsqueeze(1) + ADV_EPS)
        total, _ = group_rewards(z.view_as(r), reward_weights)  # (N,): a NaN z (std of < 2 rows) adds nothing
        total = total.masked_fill(torch.isnan(r).all(dim=1), float("nan"))  # (N,) unscorable rows leave the batch
        advantages = (total - total.nanmean()) / (_nanstd(total) + ADV_EPS)
        return torch.nan_to_num(advantages, nan=0.0)
    total, applicable = group_rewards(rewards, reward_weights)  # (N,), (N,)
    total = total.masked_fill(~applicable, float("nan"))  # (N,) unscorable rows leave the baseline
    grouped = total.view(-1, num_generations)  # (P, G)
    advantages = total - grouped.nanmean(dim=1).repeat_interleave(num_generations)  # (N,)
    if scale_rewards == "group":
        std = _nanstd(grouped, dim=1).repeat_interleave(num_generations)  # (N,)
        advantages = advantages / (std + ADV_EPS)
    elif scale_rewards == "batch":
        advantages = advantages / (_nanstd(total) + ADV_EPS)
    return torch.nan_to_num(advantages, nan=0.0)


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std ignoring NaNs: sqrt(Σ (x - mean)² / (n - 1)); NaN when n < 2."""
    n = (~torch.isnan(x)).sum(dim=dim)
    return (((x - x.nanmean(dim=dim, keepdim=True)) ** 2).nansum(dim=dim) / (n - 1).clamp(min=0)).sqrt()


def zero_std_groups(rewards_total: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(P,) bool: groups whose rewards all tie exactly (they carry no learning signal)."""
    g = rewards_total.view(-1, num_generations)  # (P, G)
    return (g == g[:, :1]).all(dim=1)


# --------------------------------------------------------------------------------------- the loss
def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref): exp(ref - logp) - (ref - logp) - 1, shape kept."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def clip_ratio(ratio: torch.Tensor, epsilon_low: float, epsilon_high: float) -> torch.Tensor:
    """clip(ρ, 1 - ε_low, 1 + ε_high)."""
    return torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if x.size(-1) == 1 and mask.size(-1) != 1:  # sequence-level quantity: one value per row
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _agg_grpo(loss_t, mask, **_):  # mean over each sequence's tokens, then over sequences
    return ((loss_t * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _agg_bnpo(loss_t, mask, **_):  # mean over all tokens of the micro-batch
    return (loss_t * mask).sum() / mask.sum().clamp(min=1.0)


def _agg_dr_grpo(loss_t, mask, *, max_completion_length=None, **_):  # sum / (B × L_max)
    length = max_completion_length if max_completion_length is not None else mask.size(1)
    return (loss_t * mask).sum() / (loss_t.size(0) * length)


def _agg_dapo(loss_t, mask, *, num_items=None, **_):  # sum / tokens in the whole generation batch
    n = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=loss_t.dtype)
    return (loss_t * mask).sum() / n.clamp(min=1.0)


def _agg_luspo(loss_t, mask, **_):  # sum over each sequence's tokens (its length × its loss), mean over sequences
    return (loss_t * mask).sum(-1).mean()


# Policy terms L_t of step 3 and 6. ratio: (B, T), or (B, 1) at sequence level; adv: (B, 1); logps: (B, T).
def _pg_clipped(ratio, adv, logps, *, epsilon_low, epsilon_high, delta, **_):  # PPO's pessimistic bound
    clipped = clip_ratio(ratio, epsilon_low, epsilon_high)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)  # two-sided clipping
    return -torch.min(unclipped * adv, clipped * adv)  # (B, T) or (B, 1)


def _pg_cispo(ratio, adv, logps, *, epsilon_high, **_):  # clip the IS weight itself (at ε_high), no gradient in it
    return -torch.clamp(ratio, max=epsilon_high).detach() * adv * logps  # (B, T)


def _pg_sapo(ratio, adv, logps, *, sapo_temperature_pos, sapo_temperature_neg, **_):  # a soft, sigmoid gate
    tau = torch.where(adv > 0, sapo_temperature_pos, sapo_temperature_neg).to(ratio.dtype)  # (B, 1)
    return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv  # (B, T) or (B, 1)


def _pg_vespo(ratio, adv, logps, *, log_ratio, mask, sampling_weights, **kw):  # Gamma-shaped sequence weight
    phi = vespo_weights(adv, log_ratio, mask, sampling_weights, **_vespo_params(kw))  # (B, 1), detached
    return -phi * adv * logps  # (B, T)


def _vespo_params(kw: dict) -> dict[str, float]:
    return {k: kw[f"vespo_{k}"] for k in ("k_pos", "lambda_pos", "k_neg", "lambda_neg")}


#: loss_type -> (policy term L_t, aggregation of the per-token loss (B, T) into a scalar), as TRL 1.16's.
LOSS_TYPES: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "grpo": (_pg_clipped, _agg_grpo),
    "bnpo": (_pg_clipped, _agg_bnpo),
    "dr_grpo": (_pg_clipped, _agg_dr_grpo),
    "dapo": (_pg_clipped, _agg_dapo),
    "cispo": (_pg_cispo, _agg_dapo),
    "sapo": (_pg_sapo, _agg_grpo),
    "luspo": (_pg_clipped, _agg_luspo),
    "vespo": (_pg_vespo, _agg_dapo),
}
#: loss_type -> its aggregation alone.
LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {k: agg for k, (_, agg) in LOSS_TYPES.items()}
#: The loss types normalised by ``num_items`` (the generation batch's tokens, :func:`dapo_num_items`): their
#: micro-batch losses already sum to the window's, so a trainer does not divide them by the accumulation steps.
NUM_ITEMS_LOSS_TYPES = frozenset(k for k, agg in LOSS_AGGREGATIONS.items() if agg is _agg_dapo)


@torch.no_grad()
def vespo_weights(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    sampling_weights: torch.Tensor | None = None,
    *,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> torch.Tensor:
    """VESPO's gradient scale of each sequence, φ(w) = e^λ · w^k · e^(-λ w) (a Gamma shape with φ(1) = 1), where
    w = Π_t ρ_t is the sequence's importance weight (a product, not GSPO's geometric mean), times the sampler
    correction Π_t sampling_weights_t (token-level weights) when given. In log space and clamped as the paper's
    code: log ρ_t into [-20, 20], log w and each log sampling weight into [log 1e-8, 20]; (k, λ) are the _pos pair
    where A >= 0, the _neg pair elsewhere (λ at least 1e-4); a non-finite φ is 0.

    advantages: (B,) or (B, 1); log_ratio, mask, sampling_weights: (B, T). Returns φ: (B, 1), without gradient.
    """
    lo = math.log(1e-8)
    mask = mask.to(log_ratio.dtype)
    log_w = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)  # (B, 1)
    if sampling_weights is not None:
        log_w = log_w + (torch.log(sampling_weights).clamp(lo, 20.0) * mask).sum(-1, keepdim=True)
    log_w = log_w.clamp(lo, 20.0)  # (B, 1)
    nonneg = advantages.reshape(-1, 1) >= 0  # (B, 1)
    k = torch.where(nonneg, k_pos, k_neg).to(log_w.dtype)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).to(log_w.dtype).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def off_policy_mask(
    advantages: torch.Tensor, logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor, threshold: float
) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (its δ = `threshold`): 0 for a sequence with A < 0 whose mean
    per-token log(π_behaviour / π_θ) over its completion exceeds `threshold`, 1 otherwise. A NaN behaviour
    log-prob (a token the sampler could not score) counts as no evidence (0).

    advantages: (B,) or (B, 1); logps, behaviour_logps, mask: (B, T). Returns (B, 1) in mask's dtype, no gradient.
    """
    mask = mask.to(logps.dtype)
    kl = torch.nan_to_num(behaviour_logps[:, : logps.size(1)] - logps.detach(), nan=0.0)  # (B, T)
    seq_kl = (kl * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # (B, 1)
    return ((advantages.reshape(-1, 1) >= 0) | (seq_kl <= threshold)).to(mask.dtype)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """H of the entropy bonus ``loss - entropy_coef · H``: the mean per-token entropy over the masked tokens, the
    same whatever the loss type's normalisation. entropy, mask: (B, T) -> scalar (with entropy's gradient)."""
    mask = mask.to(entropy.dtype)
    return (entropy * mask).sum() / mask.sum().clamp(min=1.0)


def adaptive_entropy_coef(
    coef: float, entropy: float, *, target: float, delta: float, coef_min: float, coef_max: float
) -> float:
    """Skywork-OR1's entropy controller, once per optimiser step: the coefficient grows by `delta` (up to
    `coef_max`) while the measured entropy is at or below `target`, and shrinks by `delta` (down to `coef_min`)
    otherwise. e.g. 0.0 with delta 0.005: 0.005 after a step at entropy 0.1 <= 0.2."""
    return min(coef + delta, coef_max) if entropy <= target else max(coef - delta, coef_min)


def applied_entropy_coef(coef: float, last_entropy: float, target: float) -> float:
    """The adaptive bonus acts only while the entropy of the last optimiser step is at or below `target`
    (before any step, last_entropy = inf: no bonus)."""
    return coef if last_entropy <= target else 0.0


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
    num_items: int | float | torch.Tensor | None = None,
    use_bias_correction_kl: bool = True,
    sampling_weights: torch.Tensor | None = None,
    entropy_mask: torch.Tensor | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    off_policy_mask_threshold: float | None = None,
    behaviour_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective (policy term of `loss_type`, optional KL penalty), as a loss to minimise.

    logps, old_logps, ref_logps, mask: (B, T) log-probs of the sampled completion tokens under the
    current, behaviour and reference policies; mask is 1 on real completion tokens.
    advantages: (B,). old_logps=None means on-policy (ratio 1, gradient still flows).
    sampling_weights: (B, T) or (B, 1), detached: π_old / π_sampler when another engine (vLLM) sampled the
    completions (truncated or masked importance weights); they scale the policy term, not the KL (``vespo``
    folds them into its sequence weight instead, so they must be token-level there).
    entropy_mask: (B, T), 0 on the tokens the policy term leaves out (``top_entropy_mask``); the KL and the
    normalisers still cover every completion token, as TRL's.
    sapo_temperature_pos/neg: SAPO's τ for A > 0 / A <= 0. vespo_k_*/vespo_lambda_*: VESPO's φ (see
    :func:`vespo_weights`). epsilon_high is CISPO's cap on ρ itself (not 1 + ε_high; TRL's default: epsilon).
    off_policy_mask_threshold: drop from the policy term the sequences :func:`off_policy_mask` flags, measured
    against behaviour_logps (B, T) (the sampler's log-probs; default old_logps).
    Returns (scalar loss, metrics) with metrics kl (beta != 0), ratio_mean, and per loss type
    clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean (the clipped ones), cispo_clip_ratio,
    vespo/phi_seq_mean.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose from {sorted(LOSS_TYPES)}")
    mask = mask.to(logps.dtype)
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    adv = advantages.unsqueeze(1)  # (B, 1)
    old = logps.detach() if old_logps is None else old_logps

    log_ratio = logps - old  # (B, T)
    if importance_sampling_level == "token":
        log_w = log_ratio  # (B, T)
    elif importance_sampling_level == "sequence":  # GSPO: geometric mean over the completion
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (B, 1)
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    ratio = torch.exp(log_w)  # (B, T) or (B, 1)

    term, aggregate = LOSS_TYPES[loss_type]
    options = dict(
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        delta=delta,
        sapo_temperature_pos=sapo_temperature_pos,
        sapo_temperature_neg=sapo_temperature_neg,
        vespo_k_pos=vespo_k_pos,
        vespo_lambda_pos=vespo_lambda_pos,
        vespo_k_neg=vespo_k_neg,
        vespo_lambda_neg=vespo_lambda_neg,
    )
    loss_t = term(ratio, adv, logps, log_ratio=log_ratio, mask=mask, sampling_weights=sampling_weights, **options)
    if off_policy_mask_threshold is not None:
        behaviour = old if behaviour_logps is None else behaviour_logps
        loss_t = loss_t * off_policy_mask(advantages, logps, behaviour, mask, off_policy_mask_threshold)  # (B, 1)
    if entropy_mask is not None:
        loss_t = loss_t * entropy_mask.to(logps.dtype)  # (B, T)
    if sampling_weights is not None and term is not _pg_vespo:
        loss_t = loss_t * sampling_weights  # (B, T)

    metrics: dict[str, float] = {}
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        kl = k3_kl(logps, ref_logps)  # (B, T)
        if use_bias_correction_kl:
            kl = kl * ratio  # importance-sampling correction of the KL estimate
        loss_t = loss_t + beta * kl
        metrics["kl"] = _masked_mean(kl.detach(), mask).item()
    loss_t = loss_t.expand_as(mask) if loss_t.size(-1) == 1 else loss_t

    loss = aggregate(loss_t, mask, max_completion_length=max_completion_length, num_items=num_items)

    with torch.no_grad():
        if term is _pg_clipped:  # on the delta-clamped ratio, as TRL (it only matters if delta < 1 + ε_high)
            shown = ratio if delta is None else torch.clamp(ratio, max=delta)
            low = ((shown < 1 - eps_low) & (adv < 0)).to(logps.dtype)
            high = ((shown > 1 + eps_high) & (adv > 0)).to(logps.dtype)
            metrics["clip_ratio/low_mean"] = _masked_mean(low, mask).item()
            metrics["clip_ratio/high_mean"] = _masked_mean(high, mask).item()
            metrics["clip_ratio/region_mean"] = _masked_mean(((low + high) > 0).to(logps.dtype), mask).item()
        elif term is _pg_cispo:
            metrics["cispo_clip_ratio"] = _masked_mean(((ratio > eps_high) & (adv > 0)).to(logps.dtype), mask).item()
        elif term is _pg_vespo:
            phi = vespo_weights(adv, log_ratio, mask, sampling_weights, **_vespo_params(options))
            metrics["vespo/phi_seq_mean"] = phi.mean().item()
        metrics["ratio_mean"] = _masked_mean(ratio.detach(), mask).item()
    return loss, metrics


# --------------------------------------------------------------------------------------- log-probs
def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Train only on the highest-entropy ("forking") tokens: keep the tokens whose entropy is in the top `quantile`
    of the micro-batch's completion tokens (TRL's ``top_entropy_quantile``). entropy, mask: (B, T) -> mask (B, T)."""
    if quantile >= 1.0:
        return mask
    ent = entropy[mask.bool()]  # (n_tokens,)
    threshold = torch.quantile(ent.float(), 1 - quantile) if ent.numel() else 0.0
    return mask * (entropy >= threshold).int()


def importance_sampling_weights(
    old_logps: torch.Tensor,
    sampling_logps: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> torch.Tensor:
    """TRL's correction for a rollout engine (vLLM) whose sampling policy is not exactly π_old: the weights
    exp(log π_old − log π_sampler) of the sampled tokens, per token (``token_*``) or per sequence (``sequence_*``;
    summed log-ratios), truncated into [clip_min, clip_max] (``*_truncate``) or set to 0 outside it (``*_mask``).
    old_logps, sampling_logps, mask: (B, T). Returns (B, T), to pass to ``policy_loss(sampling_weights=...)``."""
    mask = mask.to(old_logps.dtype)  # (B, T)
    diff = torch.nan_to_num((old_logps - sampling_logps[:, : old_logps.size(1)]) * mask, nan=0.0)  # (B, T)
    log_w = diff.sum(-1, keepdim=True) if mode.startswith("sequence") else diff  # (B, 1) or (B, T)
    w = torch.exp(log_w)
    if mode.endswith("_truncate"):
        w = torch.clamp(w, min=clip_min, max=clip_max)
    else:
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        w = w.masked_fill((w < lo) | (w > hi), 0.0)
    return w.expand_as(mask).contiguous()


def dapo_num_items(tokens_all_processes: float, world_size: int, accumulation_steps: int, micro_batches: int) -> float:
    """The ``num_items`` of loss type ``dapo``: every completion token of the whole generation batch weighs the
    same (TRL's ``num_items_in_batch`` scaling). The loss of a micro-batch is divided by the tokens of all W
    processes over W (the engine averages the W gradients), and each optimiser step accumulates
    `accumulation_steps` of the batch's `micro_batches` micro-batches."""
    return tokens_all_processes / world_size * accumulation_steps / max(1, micro_batches)


def completion_mask_after_eos(completion_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B, T) int mask: 1 up to and including the first EOS of each row, 0 after it."""
    eos_ids = torch.as_tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=completion_ids.device
    )
    is_eos = torch.isin(completion_ids, eos_ids)  # (B, T)
    t = completion_ids.size(1)
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], t, dtype=torch.long))
    pos = torch.arange(t, device=completion_ids.device).unsqueeze(0)  # (1, T)
    return (pos <= first.unsqueeze(1)).int()


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """log_softmax(logits)[..., index] without materialising full log-probs for more than `chunk` rows.

    logits: (B, T, V), index: (B, T) -> (B, T).
    """
    out = []
    flat_logits = logits.reshape(-1, logits.size(-1))  # (B*T, V)
    flat_index = index.reshape(-1)  # (B*T,)
    for s in range(0, flat_logits.size(0), chunk):
        rows = flat_logits[s : s + chunk].float()
        picked = rows.gather(-1, flat_index[s : s + chunk, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(out).view_as(index)


def entropy_from_logits(logits: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Per-position entropy of softmax(logits): (B, T, V) -> (B, T), chunked like above."""
    flat = logits.reshape(-1, logits.size(-1))
    out = []
    for s in range(0, flat.size(0), chunk):
        rows = flat[s : s + chunk].float()
        logp = torch.log_softmax(rows, dim=-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out).view(logits.shape[:-1])
