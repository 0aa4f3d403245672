"""The ``vqa`` tool: a question about the study, answered from the image or from the study's facts.

Engines, in the order ``run`` prefers them:

* ``LLaVA-Med`` (configured, ``models.llava_med``): looks at the middle frame and answers in its words;
* ``Study facts`` (classical): answers from the header and the job's earlier tool results only, and says
  plainly when it cannot.
"""

from __future__ import annotations

import logging

from tools.base import EngineKind, EngineStatus, Queue, Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.vqa import facts, llava_med

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128
ENGINE_CHOICES = {"llava-med": llava_med.ENGINE_NAME, "facts": facts.ENGINE_NAME}
PARAMETERS = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 1},
        "engine": {"enum": list(ENGINE_CHOICES)},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 1024},
    },
    "additionalProperties": False,
}


class VQATool(Tool):
    """Answers ``params["question"]``, or the job's instruction when no question is given.

    ``engine`` (``"llava-med"`` or ``"facts"``) picks the engine; by default LLaVA-Med when it is
    configured and loadable, else the study facts.
    """

    card = ToolCard(
        name="vqa",
        description=(
            "Answer a question about the study: with LLaVA-Med from the image when configured, else from "
            "the DICOM header (modality, body part, view...) and the earlier tools' results (sizes, what "
            "was found)."
        ),
        tasks=("vqa", "question answering"),
        modalities=("CT", "MR", "CR", "DX", "US", "SM", "XA", "MG", "PT", "NM", "OT"),
        parameters=PARAMETERS,
        outputs=("text",),
        queue=Queue.GPU,
        aliases=("llava-med", "visual question answering"),
    )

    def engines(self) -> list[EngineStatus]:
        return [
            llava_med.engine_status(self.models),
            EngineStatus(facts.ENGINE_NAME, EngineKind.CLASSICAL, True, "ready"),
        ]

    def load(self) -> None:
        if llava_med.engine_status(self.models).ready:
            llava_med.load(self.models, self.models.device)

    def run(self, tool_input: ToolInput) -> ToolResult:
        question = str(tool_input.params.get("question") or tool_input.instruction).strip()
        llava = llava_med.engine_status(self.models)
        choice = tool_input.params.get("engine") or ("llava-med" if llava.ready else "facts")
        if choice not in ENGINE_CHOICES:
            return ToolResult.failed(
                facts.ENGINE_NAME,
                f"Invalid 'engine' value {choice!r} - must be one of {sorted(ENGINE_CHOICES)}",
            )
        engine = ENGINE_CHOICES[choice]
        if not question:
            return ToolResult.failed(engine, "no question: give the 'question' parameter or an instruction")
        if choice == "facts":
            return ToolResult(
                status=ToolStatus.OK,
                engine=facts.ENGINE_NAME,
                engine_version=facts.ENGINE_VERSION,
                text=facts.answer(
                    question,
                    tool_input.metadata,
                    tool_input.prior_results,
                    tool_input.modality,
                    tool_input.body_part,
                ),
            )
        if not llava.ready:
            return ToolResult.unavailable(
                engine, f"{llava.reason}; ask for engine 'facts' to answer from the study's data"
            )
        return self._llava_answer(tool_input, question)

    def _llava_answer(self, tool_input: ToolInput, question: str) -> ToolResult:
        max_new_tokens = int(tool_input.params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        try:
            model, processor = llava_med.load(self.models, tool_input.device)
            image = llava_med.middle_frame_rgb(tool_input.image, tool_input.is_color, tool_input.window)
            text = llava_med.answer(model, processor, image, question, max_new_tokens)
        except Exception as exc:
            logger.exception("%s could not answer", llava_med.ENGINE_NAME)
            return ToolResult.failed(
                llava_med.ENGINE_NAME,
                f"{llava_med.ENGINE_NAME} could not answer ({type(exc).__name__}: {exc}); check the folder "
                f"{self.models.llava_med} or ask for engine 'facts'",
            )
        if not text:
            return ToolResult.failed(llava_med.ENGINE_NAME, f"{llava_med.ENGINE_NAME} gave an empty answer")
        return ToolResult(
            status=ToolStatus.OK,
            engine=llava_med.ENGINE_NAME,
            engine_version=llava_med.engine_version(self.models),
            text=text,
        )
