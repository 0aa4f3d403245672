"""Classification: label probabilities for an image (BiomedCLIP zero-shot, or the DICOM header)."""

from tools.classification.tool import ClassificationTool

__all__ = ["ClassificationTool"]
