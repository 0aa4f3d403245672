"""Ranking a knowledge base's passages for a question, with either engine, cached per process.

An index is built once per knowledge-base folder and content: its cache key holds every file's
modification time and size, so editing a file makes the next question rebuild it (the old index stays in
memory until the process ends). The MiniLM index holds the passages' embeddings, computed once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tools.base import cached_model
from tools.retrieval import bm25, index, minilm
from tools.retrieval.index import Passage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """A passage and how well it matches the question (the engine's score; higher is better)."""

    passage: Passage
    score: float


class Ranker(Protocol):
    passages: list[Passage]

    def scores(self, question: str) -> np.ndarray: ...


class EmbeddingRanker:
    """Cosine similarity between the question's MiniLM embedding and each passage's."""

    def __init__(self, passages: list[Passage], encoder: minilm.MiniLM) -> None:
        self.passages = passages
        self.encoder = encoder
        self.vectors = encoder.encode([p.indexed_text for p in passages])
        logger.info("embedded %d knowledge-base passages with %s", len(passages), minilm.ENGINE_NAME)

    def scores(self, question: str) -> np.ndarray:
        return self.vectors @ self.encoder.encode([question])[0]


class KeywordRanker:
    """BM25 over the passages' headings and text (scaled scores, see ``bm25``)."""

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.bm25 = bm25.BM25([p.indexed_text for p in passages])

    def scores(self, question: str) -> np.ndarray:
        return self.bm25.scores(question)


def ranker(engine: str, folder: Path, device: str = "cpu") -> Ranker:
    """The cached ranker of ``engine`` over ``folder``; ``KnowledgeBaseError`` when the folder has nothing
    to search, ``RuntimeError`` when the engine cannot run here."""
    folder = folder.resolve()
    key = (folder, index.signature(folder))
    if engine == minilm.ENGINE_NAME:
        encoder = minilm.load(device)
        return cached_model(
            ("retrieval index", engine, str(encoder.device), *key),
            lambda: EmbeddingRanker(index.read_passages(folder), encoder),
        )
    if engine == bm25.ENGINE_NAME:
        return cached_model(
            ("retrieval index", engine, *key), lambda: KeywordRanker(index.read_passages(folder))
        )
    raise ValueError(f"Invalid engine '{engine}' - must be {minilm.ENGINE_NAME!r} or {bm25.ENGINE_NAME!r}")


def best(ranker: Ranker, question: str, top_k: int) -> list[Hit]:
    """The ``top_k`` best passages, best first; equal scores keep the knowledge base's order."""
    scores = ranker.scores(question)
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [Hit(ranker.passages[i], float(scores[i])) for i in order]
