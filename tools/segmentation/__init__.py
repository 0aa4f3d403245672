"""Segmentation: box or point prompts to masks (MedSAM ViT-B when configured, else LiteMedSAM)."""

from tools.segmentation.tool import Point, SegmentationTool

__all__ = ["Point", "SegmentationTool"]
