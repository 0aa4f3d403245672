"""The ``grounded_segmentation`` tool: grounding finds each structure's boxes, segmentation fills them."""

from __future__ import annotations

from tools.base import Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.grounding import GroundingTool
from tools.grounding.tool import PARAMETERS as GROUNDING_PARAMETERS
from tools.segmentation import SegmentationTool
from tools.segmentation.tool import segment_boxes


class GroundedSegmentationTool(Tool):
    """Text prompts to masks: MMedAgent's "grounding dino + MedSAM", here with the engines available."""

    card = ToolCard(
        name="grounded_segmentation",
        description=(
            "Segment named structures (e.g. 'left lung', 'right lung'): finds each one's box on every slice, "
            "then segments inside the boxes. Returns masks, boxes and volumes."
        ),
        tasks=("segmentation", "grounding"),
        modalities=GroundingTool.card.modalities,
        parameters=GROUNDING_PARAMETERS,
        outputs=("masks", "boxes", "measurements"),
        queue=SegmentationTool.card.queue,
        aliases=("grounding dino + medsam", "groundingdino + medsam", "grounded sam"),
    )

    def __init__(self) -> None:
        self.grounding = GroundingTool()
        self.segmentation = SegmentationTool()

    def readiness(self) -> tuple[bool, str]:
        return self.segmentation.readiness()

    def run(self, tool_input: ToolInput) -> ToolResult:
        grounded = self.grounding.run(tool_input)
        if grounded.status is not ToolStatus.OK:
            return grounded
        ready, reason = self.segmentation.readiness()
        if not ready:
            return ToolResult(status=ToolStatus.UNAVAILABLE, engine=grounded.engine, error=reason)
        segmented = segment_boxes(tool_input, grounded.boxes)
        segmented.engine = f"{grounded.engine} + {segmented.engine}"
        segmented.engine_version = f"{grounded.engine_version} + {segmented.engine_version}"
        return segmented
