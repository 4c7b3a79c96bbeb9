"""aha: train language models to reason with GRPO (the course's system as real software).

The public names below are imported on first use (PEP 562), so that ``import aha.cli`` and ``aha --help`` do not
pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

PUBLIC = {
    "GRPOConfig": "aha.train.config",
    "GRPOTrainer": "aha.train.grpo",
    "parse_reasoning": "aha.data.answers",
}

if TYPE_CHECKING:
    from aha.data.answers import parse_reasoning
    from aha.train.config import GRPOConfig
    from aha.train.grpo import GRPOTrainer


def __getattr__(name: str) -> Any:
    if name in PUBLIC:
        value = getattr(importlib.import_module(PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'aha' has no attribute {name!r}")


__all__ = ["GRPOConfig", "GRPOTrainer", "__version__", "parse_reasoning"]
