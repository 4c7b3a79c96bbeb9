"""Named reward functions with TRL's call convention.

A reward is ``f(prompts=..., completions=..., **dataset_columns) -> list[float | None]``. Built-ins
are registered with ``@reward(name, summary)`` on a function whose keyword-only arguments (after
``*``) are its parameters; ``get(name, **params)`` returns the callable with those bound and its
``__name__`` set to `name` (what the logs show). A reward may also register ``check(params)``, called by
``get`` with the defaults updated by the given params, to reject bad values (a ValueError) before training.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RewardFn = Callable[..., list]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    summary: str
    fn: RewardFn
    check: Callable[[dict[str, Any]], None] | None = None

    def params(self) -> dict[str, Any]:
        """Keyword-only parameters and their defaults."""
        sig = inspect.signature(self.fn)
        return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


REGISTRY: dict[str, RewardSpec] = {}


def reward(
    name: str, summary: str, check: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register `fn` under `name` (with an optional parameter `check`)."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in REGISTRY:
            raise ValueError(f"reward {name!r} registered twice")
        REGISTRY[name] = RewardSpec(name, summary, fn, check)
        return fn

    return deco


def _check_type(reward_name: str, key: str, value: Any, default: Any) -> None:
    if default is None or value is None or default is inspect.Parameter.empty:
        return
    ok = isinstance(value, type(default))
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if isinstance(default, (int, float)) and isinstance(value, bool) and not isinstance(default, bool):
        ok = False
    if not ok:
        raise ValueError(
            f"reward {reward_name!r}: parameter {key!r} must be {type(default).__name__}, "
            f"got {type(value).__name__} ({value!r})"
        )


def get(name: str, **params: Any) -> RewardFn:
    """The registered reward `name` with `params` bound; errors name the reward and the parameter."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown reward {name!r}{hint}; built-in rewards are: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    known = spec.params()
    for key, value in params.items():
        if key not in known:
            raise ValueError(
                f"reward {name!r} has no parameter {key!r}; its parameters: {', '.join(known) or '(none)'}"
            )
        _check_type(name, key, value, known[key])
    if spec.check is not None:
        spec.check({**known, **params})
    fn = functools.partial(spec.fn, **params)

    @functools.wraps(spec.fn)
    def bound(*args: Any, **kwargs: Any) -> list:
        return fn(*args, **kwargs)

    bound.__name__ = name
    bound.__qualname__ = name
    return bound


def names() -> list[str]:
    return sorted(REGISTRY)
