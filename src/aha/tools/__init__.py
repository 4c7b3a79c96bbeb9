"""Tools a model may call during a GRPO rollout: plain functions described to it by their schema, called through a
:class:`Toolbox` (timeouts, argument checks, errors as results)."""

from aha.tools.toolbox import Toolbox, ToolCall, ToolResult, environment_methods, tool_schema

__all__ = ["ToolCall", "ToolResult", "Toolbox", "environment_methods", "tool_schema"]
