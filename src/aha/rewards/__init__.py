"""Registry of named reward functions with TRL's signature: ``aha.rewards.get(name, **params)``.

``resolve(spec)`` turns a config entry (a name, ``{"name": ..., "weight": ..., **params}`` or a custom
``"module:function"``/``"file.py:function"``) into ``(callable, weight)``; ``aha rewards list`` shows them all.
"""

# importing a module registers its rewards: the built-ins, the sandboxed code rewards, the course's, Open R1's,
# reasoning-gym's verifier
from aha.rewards import builtin, code, course, openr1, reasoning_gym  # noqa: F401
from aha.rewards.custom import load_custom, resolve
from aha.rewards.registry import REGISTRY, RewardSpec, get, names, reward

__all__ = ["REGISTRY", "RewardSpec", "get", "load_custom", "names", "resolve", "reward"]
