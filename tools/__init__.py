"""Medical AI tools: each takes arrays, geometry and text, and returns a ``ToolResult``."""

from tools.base import Box, Measurement, Tool, ToolCard, ToolInput, ToolResult, ToolStatus

__all__ = ["Box", "Measurement", "Tool", "ToolCard", "ToolInput", "ToolResult", "ToolStatus"]
