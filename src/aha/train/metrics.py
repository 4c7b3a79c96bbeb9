"""Metrics: the ``metrics.jsonl`` writer the training loops share, and the rollout metrics of a GRPO batch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from aha.console import console


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    """Appends one JSON object per call to `path` (flushed at once, so a crash loses nothing)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None

    def log(self, metrics: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in metrics.items()}
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def state_dict(self) -> dict[str, Any]:
        """The file and its length now (a checkpoint's point in the metrics)."""
        exists = self.path is not None and self.path.exists()
        return {
            "metrics_path": str(self.path) if self.path else None,
            "metrics_offset": self.path.stat().st_size if exists else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Drop the lines logged after the checkpoint (they will be logged again)."""
        offset = state.get("metrics_offset")
        if self.path is None or offset is None or not self.path.exists():
            return
        if self.path.stat().st_size >= offset:
            os.truncate(self.path, offset)
        else:
            console.print(f"[yellow]{self.path} is shorter than at the checkpoint: not truncated[/yellow]")


def rollout_metrics(
    args, reward_funcs, rewards, lengths, truncated, prompts, completions, num_generations=None, extra=None
) -> dict[str, Any]:
    """The metrics of one generation batch, named as TRL logs them. rewards: (N, K) per reward function;
    lengths: (N,) completion tokens; truncated: (N,) bool (no EOS); `num_generations`: completions per prompt
    (default the config's). `prompts`/`completions` (this process's rows) and `extra` (the columns reward functions
    logged with TRL's ``log_extra``) only feed ``log_completions``."""
    import torch

    from aha.grpo import zero_std_groups
    from aha.rewards.scoring import reward_name

    g = num_generations or args.num_generations
    rewards, lengths, truncated = rewards.float().cpu(), lengths.cpu(), truncated.cpu()
    total = torch.nan_to_num(rewards) @ torch.as_tensor(args.reward_weights or [1.0] * rewards.size(1))  # (N,)
    scored = total[~rewards.isnan().all(dim=1)]  # as TRL: a sample no function scored is left out of the stats
    m: dict[str, Any] = {
        "reward": scored.mean().item() if scored.numel() else float("nan"),
        "reward_std": scored.std().item() if scored.numel() > 1 else float("nan"),  # TRL's: over the batch
        "frac_reward_zero_std": zero_std_groups(total, g).float().mean().item(),
        "completions/mean_length": lengths.float().mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": truncated.float().mean().item(),
        "num_tokens": int(lengths.sum().item()),
    }
    ended = lengths[~truncated].float() if (~truncated).any() else torch.zeros(1)  # TRL's: 0 when none ended
    m["completions/mean_terminated_length"] = ended.mean().item()
    m["completions/min_terminated_length"] = ended.min().item()
    m["completions/max_terminated_length"] = ended.max().item()
    for k, fn in enumerate(reward_funcs):
        col = rewards[:, k]
        m[f"rewards/{reward_name(fn)}/mean"] = torch.nanmean(col).item()
        m[f"rewards/{reward_name(fn)}/std"] = col[~col.isnan()].std().item() if (~col.isnan()).sum() > 1 else 0.0
    if args.log_completions:
        n = args.num_completions_to_print or 2
        extra = extra or {}
        rows = list(range(len(prompts)))
        if getattr(args, "log_unique_prompts", False):  # one completion per distinct prompt
            rows = list({str(prompts[i]): i for i in reversed(rows)}.values())[::-1]
        samples = []
        for i in rows[:n]:
            cols = {k: v[i] for k, v in extra.items() if i < len(v)}
            samples.append((str(prompts[i]), str(completions[i]), total[i].item(), cols))
        m["_samples"] = samples
        # every row of this process, for the trackers' completions tables
        names = [reward_name(fn) for fn in reward_funcs]
        m["_completions"] = {
            "columns": ["prompt", "completion", *names, "reward"],
            "rows": [
                [str(p), str(c), *rewards[i].tolist(), total[i].item()]
                for i, (p, c) in enumerate(zip(prompts, completions))
            ],
        }
    return m
