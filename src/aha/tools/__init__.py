"""Tools a model may call during a GRPO rollout: plain functions described to it by their schema, called through a
:class:`Toolbox` (timeouts, argument checks, errors as results), the built-in ``calculator`` and sandboxed
``python``, and ``resolve_tools`` for a recipe's ``tools:`` entries."""

from aha.tools.builtin import BUILTIN_TOOLS, resolve_tools
from aha.tools.calculator import calculator
from aha.tools.python import python, python_tool
from aha.tools.toolbox import Toolbox, ToolCall, ToolResult, environment_methods, tool_schema

__all__ = [
    "BUILTIN_TOOLS",
    "ToolCall",
    "ToolResult",
    "Toolbox",
    "calculator",
    "environment_methods",
    "python",
    "python_tool",
    "resolve_tools",
    "tool_schema",
]
