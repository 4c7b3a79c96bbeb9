"""User reward functions and the one entry point configs use: ``resolve(spec) -> (callable, weight)``.

A spec is a registry name (``"accuracy"``), a custom function (``"my_pkg.rewards:brevity"`` or
``"path/to/rewards.py:brevity"``), a dict ``{"name": ..., "weight": 2.0, **params}`` whose name is either of
those, or a callable. A custom function has TRL's signature ``f(completions, **kwargs) -> list[float | None]``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aha.rewards.registry import REGISTRY, RewardFn, get


def is_custom_spec(spec: str) -> bool:
    """Does `spec` look like ``module:function`` or ``file.py:function`` (rather than a registry name)?"""
    module, sep, func = spec.rpartition(":")
    return bool(sep and module and func)


def anchored(spec: Any, base: str | Path) -> Any:
    """`spec` (a name, ``file.py:function``, a dict with such a name, a callable) with a relative reward file made
    absolute from `base`: for code that calls :func:`resolve` later from another working directory."""
    name = spec.get("name") if isinstance(spec, dict) else spec
    if not isinstance(name, str) or not is_custom_spec(name):
        return spec
    target, _, attr = name.rpartition(":")
    if not (target.endswith(".py") or "/" in target or "\\" in target) or Path(target).expanduser().is_absolute():
        return spec
    fixed = f"{Path(base) / Path(target).expanduser()}:{attr}"
    return {**spec, "name": fixed} if isinstance(spec, dict) else fixed


def _load_file(spec: str, path_text: str, base: Path | None, kind: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        where = f"the recipe's directory {base}" if base is not None else f"the working directory {Path.cwd()}"
        path = (base if base is not None else Path.cwd()) / path
        if not path.is_file():
            raise ValueError(f"{kind} {spec!r}: no file {str(path)!r} (a relative path is read from {where})")
    if not path.is_file():
        raise ValueError(f"{kind} {spec!r}: no file {str(path)!r}")
    path = path.resolve()
    name = f"aha_custom_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{kind} {spec!r}: cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"{kind} {spec!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}") from e
    return module


def _load_module(spec: str, module_name: str, kind: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ValueError(f"{kind} {spec!r}: no module named {module_name!r}") from e
        raise ValueError(f"{kind} {spec!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise ValueError(f"{kind} {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e


def load_custom(spec: str, base: str | Path | None = None, *, kind: str = "custom reward") -> RewardFn:
    """The function named by ``"module:function"`` or ``"path/to/file.py:function"`` (``function`` may be dotted,
    e.g. ``Class.method``). A relative file is read from `base` (a recipe's directory), by default the working
    directory. Errors are ValueErrors naming `spec` (and the path tried), introduced by `kind` (what the function
    is for: ``"custom tool"`` when aha.tools loads one)."""
    if not isinstance(spec, str) or not is_custom_spec(spec):
        raise ValueError(f"{kind} {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    target, _, attr = spec.rpartition(":")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    module = (
        _load_file(spec, target, Path(base) if base is not None else None, kind)
        if is_file
        else _load_module(spec, target, kind)
    )
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{kind} {spec!r}: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{kind} {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def _bind(fn: Callable, name: str, params: dict[str, Any]) -> RewardFn:
    if not params:
        return fn
    bound = functools.partial(fn, **params)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> list:
        return bound(*args, **kwargs)

    wrapper.__name__ = getattr(fn, "__name__", name)
    return wrapper


def resolve(spec: str | dict[str, Any] | Callable, base: str | Path | None = None) -> tuple[RewardFn, float]:
    """(reward callable, weight) for a registry name, a custom ``module:function``/``file.py:function`` spec, a dict
    ``{"name": ..., "weight": ..., **params}`` or a callable (weight 1.0 unless the dict gives one). `base`: where a
    relative ``file.py`` is (a recipe's directory; default: the working directory)."""
    if callable(spec) and not isinstance(spec, (str, dict)):
        return spec, 1.0
    if isinstance(spec, str):
        if spec in REGISTRY or not is_custom_spec(spec):
            return get(spec), 1.0
        return load_custom(spec, base), 1.0
    if not isinstance(spec, dict):
        raise ValueError(f"a reward must be a name, a dict with a 'name' or a callable, got {type(spec).__name__}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward dict needs a 'name' (a registry name or 'module:function'), got {spec!r}")
    weight = params.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"reward {name!r}: 'weight' must be a number, got {weight!r}")
    if name in REGISTRY or not is_custom_spec(name):
        return get(name, **params), float(weight)
    return _bind(load_custom(name, base), name, params), float(weight)
