"""GRPO maths: advantages, the clipped per-token loss and its aggregations (see core.py)."""

from aha.grpo.core import (
    LOSS_AGGREGATIONS,
    clip_ratio,
    completion_mask_after_eos,
    compute_advantages,
    entropy_from_logits,
    group_rewards,
    k3_kl,
    policy_loss,
    selective_log_softmax,
    zero_std_groups,
)

__all__ = [
    "LOSS_AGGREGATIONS",
    "clip_ratio",
    "completion_mask_after_eos",
    "compute_advantages",
    "entropy_from_logits",
    "group_rewards",
    "k3_kl",
    "policy_loss",
    "selective_log_softmax",
    "zero_std_groups",
]
