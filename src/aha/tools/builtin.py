"""The built-in tools by name, and ``resolve_tools``: a recipe's ``tools:`` entries turned into callables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from aha.tools.calculator import calculator
from aha.tools.python import python_tool
from aha.tools.toolbox import tool_schema

BUILTIN_TOOLS: dict[str, Callable[[], Callable]] = {  # name -> a factory of the tool (its default limits)
    "calculator": lambda: calculator,
    "python": python_tool,
}


def resolve_tools(specs: Sequence[str | Callable], base_dir: Path | None = None) -> list[Callable]:
    """The tools `specs` name, in order: a built-in name (:data:`BUILTIN_TOOLS`), a callable as is, or a user
    function ``"path/to/file.py:fn"`` / ``"module:fn"`` (a relative file is read from `base_dir`, a recipe's
    directory; by default the working directory). Each is checked with :func:`tool_schema`; every error is one
    ValueError naming the entry."""
    from aha.rewards.custom import is_custom_spec, load_custom  # the loader custom rewards use (lazy: torch)

    if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence):
        raise ValueError(f"tools must be a list of names, 'file.py:fn' strings or functions, got {specs!r}")
    tools = []
    for spec in specs:
        if callable(spec):
            tool = spec
        elif isinstance(spec, str) and spec in BUILTIN_TOOLS:
            tool = BUILTIN_TOOLS[spec]()
        elif isinstance(spec, str) and is_custom_spec(spec):
            tool = load_custom(spec, base_dir, kind="custom tool")
        else:
            raise ValueError(
                f"unknown tool {spec!r}: the built-in tools are {', '.join(BUILTIN_TOOLS)}; a function of your own "
                "is 'path/to/file.py:function' or 'module:function'"
            )
        try:
            tool_schema(tool)
        except ValueError as e:
            raise ValueError(f"tool {spec!r}: {e}") from e
        tools.append(tool)
    return tools


__all__ = ["BUILTIN_TOOLS", "resolve_tools"]
