"""Retrieval: a question to cited passages of a Markdown knowledge base (ChatCAD+ in MMedAgent)."""

from tools.retrieval.tool import RetrievalTool

__all__ = ["RetrievalTool"]
