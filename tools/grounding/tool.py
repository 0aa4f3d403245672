"""The ``grounding`` tool: text prompts to labelled boxes per frame."""

from __future__ import annotations

import numpy as np

from tools.base import Box, Queue, Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.grounding import hounsfield
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


class GroundingTool(Tool):
    """Finds named structures and returns one box per structure per frame.

    Engine here: ``CT Hounsfield anatomy`` (body, left lung, right lung on CT), a classical engine named
    as such in every output. It also returns the coarse masks it found the boxes from.
    """

    card = ToolCard(
        name="grounding",
        description=(
            "Find named anatomical structures in an image and return a box around each, per slice. "
            f"CT only here; structures: {', '.join(hounsfield.KNOWN_STRUCTURES)}."
        ),
        tasks=("grounding", "detection"),
        modalities=("CT",),
        parameters=PARAMETERS,
        outputs=("boxes",),
        queue=Queue.CPU,
        aliases=("grounding dino",),
    )

    def run(self, tool_input: ToolInput) -> ToolResult:
        prompts = normalise_prompts(tool_input.params.get("prompts", []))
        engine = hounsfield.ENGINE_NAME
        if tool_input.modality != "CT":
            return ToolResult(
                status=ToolStatus.UNAVAILABLE,
                engine=engine,
                error=f"the {engine} engine works on CT only, not {tool_input.modality or 'unknown'} images",
            )
        unknown = [p for p in prompts if p not in hounsfield.KNOWN_STRUCTURES]
        if unknown:
            return ToolResult(
                status=ToolStatus.UNAVAILABLE,
                engine=engine,
                error=f"the {engine} engine cannot find {unknown}; it knows {list(hounsfield.KNOWN_STRUCTURES)}",
            )
        pixel_spacing = tool_input.spacing[1:] if tool_input.spacing is not None else None
        masks = hounsfield.ground(
            tool_input.image, prompts, np.asarray(tool_input.row_direction), pixel_spacing
        )
        frames, rows, columns = tool_input.image.shape
        boxes = [
            Box(
                label=label,
                frame=frame,
                xyxy=(float(xyxy[0]), float(xyxy[1]), float(xyxy[2]), float(xyxy[3])),
                score=1.0,
                rows=rows,
                columns=columns,
            )
            for label in prompts
            for frame, xyxy in sorted(hounsfield.boxes_per_slice(masks[label]).items())
        ]
        missing = [label for label in prompts if not masks[label].any()]
        if missing:
            return ToolResult(
                status=ToolStatus.FAILED,
                engine=engine,
                engine_version=hounsfield.ENGINE_VERSION,
                boxes=boxes,
                error=f"no {', '.join(missing)} found in this CT (is it a chest CT?)",
            )
        return ToolResult(
            status=ToolStatus.OK,
            engine=engine,
            engine_version=hounsfield.ENGINE_VERSION,
            masks=masks,
            boxes=boxes,
        )
