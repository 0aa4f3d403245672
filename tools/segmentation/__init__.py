"""Segmentation: box prompts to masks."""

from tools.segmentation.tool import SegmentationTool

__all__ = ["SegmentationTool"]
