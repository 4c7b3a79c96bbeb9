"""Calling reward functions on a generation batch, with errors that name the culprit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def reward_name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def score(
    reward_funcs: Sequence[Callable],
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
) -> torch.Tensor:
    """(N, K) float tensor of rewards; None/NaN become NaN ("does not apply")."""
    n = len(completions)
    out = torch.full((n, len(reward_funcs)), float("nan"))
    for k, fn in enumerate(reward_funcs):
        name = reward_name(fn)
        try:
            values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        except TypeError as e:
            raise ValueError(
                f"reward function {name!r} could not be called with prompts, completions, completion_ids and the "
                f"dataset columns {sorted(columns)}: {e}"
            ) from e
        if values is None or not hasattr(values, "__len__") or len(values) != n:
            got = "None" if values is None else f"{len(values)} values" if hasattr(values, "__len__") else repr(values)
            raise ValueError(f"reward function {name!r} must return a list of {n} rewards, got {got}")
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"reward function {name!r} returned a non-numeric reward {v!r} for sample {i}")
            if math.isfinite(v):
                out[i, k] = float(v)
    return out
