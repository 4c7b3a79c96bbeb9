"""Tools a model may call during a GRPO rollout: plain functions described to it by their schema, called through a
:class:`Toolbox` (timeouts, argument checks, errors as results), and the built-in ``calculator``."""

from aha.tools.calculator import calculator
from aha.tools.toolbox import Toolbox, ToolCall, ToolResult, environment_methods, tool_schema

__all__ = ["ToolCall", "ToolResult", "Toolbox", "calculator", "environment_methods", "tool_schema"]
