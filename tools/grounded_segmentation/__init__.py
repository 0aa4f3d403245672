"""Grounded segmentation: text prompts to masks."""

from tools.grounded_segmentation.tool import GroundedSegmentationTool

__all__ = ["GroundedSegmentationTool"]
