"""GRPO maths: advantages, the clipped per-token loss and its aggregations (see core.py)."""

from aha.grpo.core import (
    LOSS_AGGREGATIONS,
    clip_ratio,
    completion_mask_after_eos,
    compute_advantages,
    dapo_num_items,
    entropy_from_logits,
    group_rewards,
    importance_sampling_weights,
    k3_kl,
    policy_loss,
    selective_log_softmax,
    top_entropy_mask,
    zero_std_groups,
)

__all__ = [
    "LOSS_AGGREGATIONS",
    "clip_ratio",
    "completion_mask_after_eos",
    "dapo_num_items",
    "compute_advantages",
    "entropy_from_logits",
    "group_rewards",
    "importance_sampling_weights",
    "k3_kl",
    "policy_loss",
    "selective_log_softmax",
    "top_entropy_mask",
    "zero_std_groups",
]
