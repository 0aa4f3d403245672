"""The ``classification`` tool: label probabilities for an image, as MMedAgent's BiomedCLIP tool gave."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tools.base import (
    EngineKind,
    EngineStatus,
    Queue,
    Tool,
    ToolCard,
    ToolInput,
    ToolResult,
    ToolStatus,
    cached_model,
    resolve_device,
)
from tools.classification import biomedclip, header
from tools.classification.labels import IMAGE_TYPE_LABELS, clean_labels, top

logger = logging.getLogger(__name__)

#: BiomedCLIP reads any picture and the header engine any header, so every imaging modality is offered
ALL_MODALITIES = (
    "CT", "MR", "CR", "DX", "RG", "MG", "PX", "IO", "US", "SM", "GM", "XA", "RF", "PT", "NM", "ES", "XC",
    "OP", "OPT", "OT",
)  # fmt: skip

PARAMETERS = {
    "type": "object",
    "properties": {
        "labels": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "description": "candidate labels; MMedAgent's 14 image types when left out",
        },
        "top_k": {"type": "integer", "minimum": 1, "description": "keep only the k most probable labels"},
    },
    "additionalProperties": False,
}

HEADER_STATUS = EngineStatus(
    header.ENGINE_NAME,
    EngineKind.CLASSICAL,
    True,
    "ready (image type and body region from Modality, BodyPartExamined and descriptions; no pixels)",
)


def read_params(params: dict[str, Any]) -> tuple[list[str], int | None]:
    """``(candidate labels, top_k)`` from an action's parameters; ``ValueError`` names a bad one."""
    labels = clean_labels(params.get("labels") or [])
    if "labels" in params and not labels:
        raise ValueError(
            f"Invalid 'labels' value {params['labels']!r} - give at least one candidate label, "
            "or leave it out for MMedAgent's 14 image types"
        )
    top_k = params.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"Invalid 'top_k' value {top_k!r} - must be a whole number of at least 1")
    return labels, top_k


class ClassificationTool(Tool):
    """Scores candidate labels for an image, MMedAgent's 14 image types by default.

    Engines, in the order ``run`` prefers them: ``BiomedCLIP`` zero-shot on the middle frame (weights a
    user points ``models.biomedclip`` at), then ``DICOM header`` (classical: image type and body region
    as the header states them, each with probability 1.0, never a guess from pixels).
    """

    card = ToolCard(
        name="classification",
        description=(
            "Classify the image: probabilities of candidate labels (by default MMedAgent's 14 image types "
            f"such as {', '.join(IMAGE_TYPE_LABELS[:3])}, chest X-ray, lung CT). With BiomedCLIP configured it "
            "scores any labels from the pixels; without it, the image type and body region come from the "
            "DICOM header."
        ),
        tasks=("classification",),
        modalities=ALL_MODALITIES,
        parameters=PARAMETERS,
        outputs=("labels",),
        queue=Queue.GPU,
        reusable=True,
        aliases=("biomedclip",),
    )

    def engines(self) -> list[EngineStatus]:
        return [biomedclip.engine_status(self.models.biomedclip), HEADER_STATUS]

    def load(self) -> None:
        if self._biomedclip_ready():
            self._classifier(self.models.device)

    def run(self, tool_input: ToolInput) -> ToolResult:
        try:
            candidates, top_k = read_params(tool_input.params)
        except ValueError as exc:
            return ToolResult.failed(self.card.name, str(exc))
        if self._biomedclip_ready():
            return self._run_biomedclip(tool_input, candidates, top_k)
        return self._run_header(tool_input, candidates, top_k)

    def _biomedclip_ready(self) -> bool:
        status = biomedclip.engine_status(self.models.biomedclip)
        if not status.ready and self.models.biomedclip is not None:
            logger.warning("BiomedCLIP cannot run, classifying from the DICOM header: %s", status.reason)
        return status.ready

    def _classifier(self, device: str) -> biomedclip.ZeroShotClassifier:
        """BiomedCLIP loaded once per process, weights folder and device."""
        folder = Path(self.models.biomedclip or "").expanduser().resolve()
        resolved = resolve_device(device)
        return cached_model(
            (biomedclip.ENGINE_NAME, str(folder), resolved),
            lambda: biomedclip.load_classifier(folder, resolved),
        )

    def _run_biomedclip(self, tool_input: ToolInput, candidates: list[str], top_k: int | None) -> ToolResult:
        engine = biomedclip.ENGINE_NAME
        labels = candidates or list(IMAGE_TYPE_LABELS)
        if len(labels) < 2:
            return ToolResult.failed(
                engine,
                f"zero-shot needs at least two candidate labels (one alone always scores 1.0), got {labels}",
            )
        try:
            frame, index = biomedclip.display_frame(tool_input.image, tool_input.is_color, tool_input.window)
        except ValueError as exc:
            return ToolResult.failed(engine, str(exc))
        try:
            classifier = self._classifier(tool_input.device)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            logger.exception("BiomedCLIP does not load from %s", self.models.biomedclip)
            return ToolResult.failed(
                engine, f"BiomedCLIP could not be loaded from {self.models.biomedclip}: {exc}"
            )
        probabilities = classifier.classify(frame, labels)
        best = max(probabilities, key=lambda label: probabilities[label])
        text = (
            f"{engine} zero-shot over {len(labels)} labels ('{biomedclip.TEMPLATE}<label>') on frame "
            f"{index + 1} of {tool_input.image.shape[0]}: most likely {best} ({probabilities[best]:.2f})."
        )
        return ToolResult(
            status=ToolStatus.OK,
            engine=engine,
            engine_version=classifier.version,
            labels=top(probabilities, top_k),
            text=text,
        )

    def _run_header(self, tool_input: ToolInput, candidates: list[str], top_k: int | None) -> ToolResult:
        engine = header.ENGINE_NAME
        facts = header.read_header(tool_input.metadata, tool_input.modality, tool_input.body_part)
        stated = facts.labels()
        if not stated:
            read = ", ".join(facts.evidence) or "no Modality"
            return ToolResult.unavailable(
                engine,
                f"The DICOM header states no image type or body region this engine knows ({read}). "
                "Set models.biomedclip to classify the pixels with BiomedCLIP.",
            )
        text = facts.sentence()
        labels = stated
        if candidates:
            labels, undecided = header.match_candidates(facts, candidates)
            if not labels:
                return ToolResult.unavailable(
                    engine,
                    f"The DICOM header states {'; '.join(stated)}, which neither confirms nor rules out "
                    f"{candidates}. Set models.biomedclip to score these labels from the pixels with BiomedCLIP.",
                )
            if undecided:
                text += f" The header cannot decide {undecided}."
        return ToolResult(
            status=ToolStatus.OK,
            engine=engine,
            engine_version=header.ENGINE_VERSION,
            labels=top(labels, top_k),
            text=text,
        )
