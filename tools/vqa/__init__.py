"""Visual question answering: LLaVA-Med when configured, else answers from the study's facts."""

from tools.vqa.tool import VQATool

__all__ = ["VQATool"]
