"""The entropy bonus's coefficient over a run (TRL's ``entropy_coef`` / ``use_adaptive_entropy``).

Static: every micro-batch's loss is ``policy loss - entropy_coef · H`` (H: ``aha.grpo.entropy_bonus``, divided by
the accumulation steps like the loss). Adaptive (Skywork-OR1): the coefficient starts at ``entropy_coef`` and is
moved once per optimiser step by ``aha.grpo.adaptive_entropy_coef`` from the window's mean token entropy over all
processes; the bonus acts only while the last step's entropy is at or below ``entropy_target``
(``aha.grpo.applied_entropy_coef``), so the first window has none. The controller's state is checkpointed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from aha.grpo import adaptive_entropy_coef, applied_entropy_coef
from aha.train.distributed import sum_all


class EntropyControl:
    """``enabled``: the run has a bonus at all; ``applied()``: this window's coefficient; ``observe`` each
    micro-batch's entropies, then ``step`` after each optimiser step (adaptive only)."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.coef = float(args.entropy_coef)
        self.adaptive = bool(args.use_adaptive_entropy)
        self.enabled = self.coef != 0.0 or self.adaptive
        self.last_entropy = math.inf  # no step measured yet: the adaptive bonus waits for one
        self._sum = self._count = 0.0  # this window's entropy sum and token count (this process)

    def applied(self) -> float:
        if not self.adaptive:
            return self.coef
        return applied_entropy_coef(self.coef, self.last_entropy, self.args.entropy_target)

    def observe(self, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a micro-batch's token entropies (B, T) over `mask` (B, T) to the window's measurement."""
        if self.adaptive:
            m = mask.to(entropy.dtype)
            self._sum += float((entropy.detach() * m).sum())
            self._count += float(m.sum())

    def step(self, accelerator: Any) -> None:
        """After an optimiser step: the window's mean entropy over every process moves the coefficient."""
        if not self.adaptive:
            return
        total, count = sum_all(accelerator, self._sum), sum_all(accelerator, self._count)
        self.last_entropy = total / max(count, 1.0)
        a = self.args
        self.coef = adaptive_entropy_coef(
            self.coef,
            self.last_entropy,
            target=a.entropy_target,
            delta=a.entropy_coef_delta,
            coef_min=a.entropy_coef_min,
            coef_max=a.entropy_coef_max,
        )
        self._sum = self._count = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"entropy_coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef, self.last_entropy = float(state["entropy_coef"]), float(state["last_entropy"])
        self._sum = self._count = 0.0
