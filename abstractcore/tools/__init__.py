"""Tools: definitions (``@tool``, :class:`Tool`), call validation, and the tool loop."""

from __future__ import annotations

from .calls import ToolCallAssembler, validate_tool_calls
from .definition import Tool, normalize_tools, tool
from .loop import DEFAULT_MAX_TURNS, ToolResult, ToolRun, arun_tools, run_tools

__all__ = [
    "DEFAULT_MAX_TURNS",
    "Tool",
    "ToolCallAssembler",
    "ToolResult",
    "ToolRun",
    "arun_tools",
    "normalize_tools",
    "run_tools",
    "tool",
    "validate_tool_calls",
]
