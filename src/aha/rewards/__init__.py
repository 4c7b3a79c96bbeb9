"""Registry of named reward functions with TRL's signature: ``aha.rewards.get(name, **params)``.

``resolve(spec)`` turns a config entry (a name, ``{"name": ..., "weight": ..., **params}`` or a custom
``"module:function"``/``"file.py:function"``) into ``(callable, weight)``; ``aha rewards list`` shows them all.
"""

from aha.rewards import builtin as _builtin  # noqa: F401  (registers the built-ins)
from aha.rewards import code as _code  # noqa: F401  (registers the sandboxed code rewards)
from aha.rewards import course as _course  # noqa: F401  (registers the course's rewards)
from aha.rewards import openr1 as _openr1  # noqa: F401  (registers Open R1's rewards)
from aha.rewards.custom import load_custom, resolve
from aha.rewards.registry import REGISTRY, RewardSpec, get, names, reward

__all__ = ["REGISTRY", "RewardSpec", "get", "load_custom", "names", "resolve", "reward"]
