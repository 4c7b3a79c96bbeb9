"""The policy's forward pass over (prompt, completion) pairs: per-token log-probs and entropies.

This is where GRPO spends its training compute (one forward + backward per micro-batch), so it is kept
in one place: the loss, the π_old and the π_ref passes all go through ``token_logps``.
"""

from __future__ import annotations

import torch

from aha.grpo.core import entropy_from_logits, selective_log_softmax


def token_logps(
    model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens (B, T) (logits divided by the sampling temperature, as in
    TRL), and optionally the per-position entropy (B, T)."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+T)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, P+T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    t = completion_ids.size(1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=t + 1).logits
    logits = logits[:, :-1, :] / temperature  # (B, T, V): position i predicts completion token i
    logps = selective_log_softmax(logits, completion_ids)
    ent = entropy_from_logits(logits.detach()) if with_entropy else None
    return logps, ent
