"""The ``grounding`` tool: text prompts to labelled boxes per frame."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tools.base import (
    Box,
    EngineKind,
    EngineStatus,
    Queue,
    Tool,
    ToolCard,
    ToolInput,
    ToolResult,
    ToolStatus,
)
from tools.grounding import grounding_dino, hounsfield, radiograph
from tools.prompts import normalise_prompts

PARAMETERS = {
    "type": "object",
    "properties": {
        "prompts": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        "box_threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "text_threshold": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["prompts"],
    "additionalProperties": False,
}

#: A box drawn around a coarse classical mask gets a margin: pixels on CT, a fraction of the frame's
#: longer side on radiographs (whose sizes vary tenfold).
CT_BOX_MARGIN = 5
RADIOGRAPH_BOX_MARGIN = 0.01


@dataclass(frozen=True)
class _Engine:
    """One engine as the tool runs it.

    ``readiness`` says whether it can run here at all; ``refusal`` why it cannot take this input and these
    prompts ("" when it can); ``run`` runs it.
    """

    name: str
    kind: EngineKind
    readiness: Callable[[], tuple[bool, str]]
    refusal: Callable[[ToolInput, list[str]], str]
    run: Callable[[ToolInput, list[str]], ToolResult]


def _classical(reason: str) -> Callable[[], tuple[bool, str]]:
    return lambda: (True, reason)


def _takes_anything(tool_input: ToolInput, prompts: list[str]) -> str:
    """Grounding DINO is open-vocabulary and reads any image; its readiness is all that can stop it."""
    return ""


def _unknown_prompts(prompts: list[str], known: tuple[str, ...]) -> str:
    unknown = [p for p in prompts if p not in known]
    return f"cannot find {unknown}; it knows {list(known)}" if unknown else ""


def _hounsfield_refusal(tool_input: ToolInput, prompts: list[str]) -> str:
    if tool_input.modality != "CT":
        return f"works on CT only, not {tool_input.modality or 'unknown'} images"
    if tool_input.is_color:
        return "needs Hounsfield units, not a colour image"
    return _unknown_prompts(prompts, hounsfield.KNOWN_STRUCTURES)


def _radiograph_refusal(tool_input: ToolInput, prompts: list[str]) -> str:
    if tool_input.is_color:
        return "needs a grey radiograph, not a colour image"
    reason = radiograph.refusal(tool_input.modality, tool_input.row_direction, tool_input.metadata)
    return reason or _unknown_prompts(prompts, radiograph.KNOWN_STRUCTURES)


def _boxes_from_masks(masks: dict[str, np.ndarray], prompts: list[str], margin: int) -> list[Box]:
    """One box per label per frame around its mask, score 1.0 (a classical engine has no confidence)."""
    boxes = []
    for label in prompts:
        rows, columns = masks[label].shape[1:]
        for frame, xyxy in sorted(hounsfield.boxes_per_slice(masks[label], margin=margin).items()):
            x0, y0, x1, y1 = (float(v) for v in xyxy)
            boxes.append(Box(label, frame, (x0, y0, x1, y1), 1.0, rows, columns))
    return boxes


def _classical_result(
    engine: str, version: str, masks: dict[str, np.ndarray], prompts: list[str], margin: int, where: str
) -> ToolResult:
    boxes = _boxes_from_masks(masks, prompts, margin)
    missing = [label for label in prompts if not masks[label].any()]
    if missing:
        return ToolResult(
            status=ToolStatus.FAILED,
            engine=engine,
            engine_version=version,
            boxes=boxes,
            error=f"no {', '.join(missing)} found in this {where}",
        )
    return ToolResult(status=ToolStatus.OK, engine=engine, engine_version=version, masks=masks, boxes=boxes)


def _run_hounsfield(tool_input: ToolInput, prompts: list[str]) -> ToolResult:
    spacing = tool_input.spacing
    masks = hounsfield.ground(
        tool_input.image,
        prompts,
        np.asarray(tool_input.row_direction),
        spacing[1:] if spacing is not None else None,
        spacing[0] if spacing is not None else None,
    )
    return _classical_result(
        hounsfield.ENGINE_NAME,
        hounsfield.ENGINE_VERSION,
        masks,
        prompts,
        CT_BOX_MARGIN,
        "CT (is it a chest CT?)",
    )


def _run_radiograph(tool_input: ToolInput, prompts: list[str]) -> ToolResult:
    masks = radiograph.ground(
        tool_input.image, prompts, np.asarray(tool_input.row_direction), tool_input.window
    )
    margin = max(1, round(RADIOGRAPH_BOX_MARGIN * max(tool_input.image.shape[1:3])))
    where = "radiograph (is it a frontal chest radiograph shown with air dark?)"
    return _classical_result(radiograph.ENGINE_NAME, radiograph.ENGINE_VERSION, masks, prompts, margin, where)


class GroundingTool(Tool):
    """Finds named structures and returns one box per structure per frame.

    Engines, in the order it prefers them: ``Grounding DINO`` (any structure, any image; weights a user
    points ``models.grounding_dino`` at), then two classical engines named as such in every output:
    ``CT Hounsfield anatomy`` (body, lungs, bone, air on CT) and ``Chest radiograph lung fields`` (lungs on
    a frontal CR or DX). The first engine that is ready and can take the image and the prompts runs; the
    classical ones also return the coarse masks they found the boxes from.
    """

    card = ToolCard(
        name="grounding",
        description=(
            "Find named anatomical structures in an image and return a box around each, per slice. "
            f"CT: {', '.join(hounsfield.KNOWN_STRUCTURES)}; frontal chest radiographs (CR, DX): "
            f"{', '.join(radiograph.KNOWN_STRUCTURES)}; any structure with Grounding DINO weights configured."
        ),
        tasks=("grounding", "detection"),
        modalities=("CT", "CR", "DX"),
        parameters=PARAMETERS,
        outputs=("boxes",),
        queue=Queue.CPU,
        aliases=("grounding dino",),
        reusable=True,
    )

    def _engines(self) -> list[_Engine]:
        return [
            _Engine(
                grounding_dino.ENGINE_NAME,
                EngineKind.CONFIGURED,
                lambda: grounding_dino.readiness(self.models.grounding_dino),
                _takes_anything,
                self._run_grounding_dino,
            ),
            _Engine(
                hounsfield.ENGINE_NAME,
                EngineKind.CLASSICAL,
                _classical(f"classical, CT: {', '.join(hounsfield.KNOWN_STRUCTURES)}"),
                _hounsfield_refusal,
                _run_hounsfield,
            ),
            _Engine(
                radiograph.ENGINE_NAME,
                EngineKind.CLASSICAL,
                _classical(f"classical, frontal chest CR/DX: {', '.join(radiograph.KNOWN_STRUCTURES)}"),
                _radiograph_refusal,
                _run_radiograph,
            ),
        ]

    def engines(self) -> list[EngineStatus]:
        return [EngineStatus(e.name, e.kind, *e.readiness()) for e in self._engines()]

    def load(self) -> None:
        """Load Grounding DINO when it is configured; the classical engines need nothing."""
        if grounding_dino.readiness(self.models.grounding_dino)[0]:
            assert self.models.grounding_dino is not None
            grounding_dino.load(self.models.grounding_dino, self.models.device)

    def _run_grounding_dino(self, tool_input: ToolInput, prompts: list[str]) -> ToolResult:
        folder = self.models.grounding_dino
        assert folder is not None
        try:
            detector = grounding_dino.load(folder, self.models.device)
        except Exception as exc:  # any failure to load is the folder's: say which folder and why
            return ToolResult.failed(
                grounding_dino.ENGINE_NAME,
                f"models.grounding_dino '{folder}' does not load as a Grounding DINO model and processor: {exc}",
            )
        boxes = grounding_dino.detect(
            detector,
            tool_input.image,
            prompts,
            tool_input.window,
            tool_input.is_color,
            float(tool_input.params.get("box_threshold", grounding_dino.BOX_THRESHOLD)),
            float(tool_input.params.get("text_threshold", grounding_dino.TEXT_THRESHOLD)),
        )
        return ToolResult(
            status=ToolStatus.OK,
            engine=grounding_dino.ENGINE_NAME,
            engine_version=detector.version,
            boxes=boxes,
        )

    def _choose(self, tool_input: ToolInput, prompts: list[str]) -> tuple[_Engine | None, str]:
        """The first ready engine that takes this input, or None and every engine's reason why not."""
        reasons = []
        for engine in self._engines():
            ready, reason = engine.readiness()
            if not ready:
                reasons.append(f"{engine.name}: {reason}")
                continue
            refusal = engine.refusal(tool_input, prompts)
            if not refusal:
                return engine, ""
            reasons.append(f"the {engine.name} engine {refusal}")
        return None, "; ".join(reasons)

    def run(self, tool_input: ToolInput) -> ToolResult:
        prompts = normalise_prompts(tool_input.params.get("prompts", []))
        if not prompts:
            return ToolResult.failed(self.card.name, "no prompts given: name the structures to find")
        engine, why_not = self._choose(tool_input, prompts)
        if engine is None:
            return ToolResult.unavailable(self.card.name, f"no grounding engine can do this: {why_not}")
        return engine.run(tool_input, prompts)
