"""Registry of named reward functions with TRL's signature: ``aha.rewards.get(name, **params)``."""

from aha.rewards import builtin as _builtin  # noqa: F401  (registers the built-ins)
from aha.rewards.registry import REGISTRY, RewardSpec, get, names, reward

__all__ = ["REGISTRY", "RewardSpec", "get", "names", "reward"]
