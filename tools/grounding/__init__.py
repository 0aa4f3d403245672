"""Grounding: text prompts to labelled boxes."""

from tools.grounding.tool import GroundingTool

__all__ = ["GroundingTool"]
