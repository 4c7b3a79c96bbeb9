"""Typed settings: how every aha config dataclass (GRPOConfig, SFTConfig, the tiny model's, eval's, sampling's) is
checked, the one way.

A config is a dataclass whose fields carry string annotations (``from __future__ import annotations``). Its
``__post_init__`` calls :func:`check_types` (every field against its annotation: ``int``, ``float``, ``bool``,
``str``, ``list[str]``, ``list[float]``, unions with ``None``) and then :func:`require` for each value rule; both
raise one ``ValueError`` naming the class and the field. :func:`from_dict` builds one from a mapping, refusing
unknown keys with a "did you mean". Recipes (``--set``) type their values with :func:`coerce` and :func:`type_ok`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")
FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list[float]": lambda v: (
        isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    ),
    "list[int]": lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
    "dict": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}


def type_ok(value: Any, annotation: str) -> bool:
    """Does `value` fit the string annotation (``"int | None"``, ``"list[str] | str"``, ...)? Annotations naming no
    checkable type (``Any``, a class) accept anything."""
    if value is None:
        return "None" in annotation or annotation.strip() in ("Any", "any")
    parts = [t.strip() for t in annotation.split("|") if t.strip() and t.strip() != "None"]
    known = [t for t in parts if t in CHECKS]
    if len(known) < len(parts):  # a type this check does not know: the class validates it itself
        return True
    return any(CHECKS[t](value) for t in known)


def coerce(value: Any, annotation: str) -> Any:
    """YAML 1.1 reads ``1e-5`` as a string: make it a float where a float is expected."""
    if isinstance(value, str) and "float" in annotation and FLOAT_RE.fullmatch(value.strip()):
        return float(value)
    return value


def suggest(key: str, known: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to `key`, or ""."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_types(cls: type) -> dict[str, str]:
    """Field name -> annotation of a config dataclass."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def check_types(config: Any) -> None:
    """Every field of `config` against its annotation; a ValueError naming the class and the first bad field."""
    name = type(config).__name__
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not type_ok(value, str(f.type)):
            raise ValueError(f"{name}.{f.name} must be {f.type}, got {type(value).__name__} ({value!r})")


def require(config: Any, ok: bool, field: str, rule: str) -> None:
    """A value rule of `config`: a ValueError ``Class.field: rule (got value)`` unless `ok`."""
    if not ok:
        raise ValueError(f"{type(config).__name__}.{field}: {rule} (got {getattr(config, field)!r})")


class Checked:
    """Base of a config dataclass whose value rules are its ``validate()``: on construction, the types by annotation
    (:func:`check_types`), then ``validate()``."""

    def __post_init__(self) -> None:
        check_types(self)
        self.validate()

    def validate(self) -> None:
        """The value rules; a ValueError naming the option that breaks one."""


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """``cls(**values)``, refusing unknown keys with a 'did you mean'."""
    known = field_types(cls)
    for key in values:
        if key not in known:
            raise ValueError(f"{cls.__name__} has no field {key!r}{suggest(key, known)}")
    return cls(**values)
