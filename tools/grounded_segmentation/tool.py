"""The ``grounded_segmentation`` tool: grounding finds each structure's boxes, segmentation fills them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tools.base import EngineStatus, Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.grounding import GroundingTool
from tools.grounding.tool import PARAMETERS as GROUNDING_PARAMETERS
from tools.segmentation import SegmentationTool

if TYPE_CHECKING:
    from config.settings import ModelsSection


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
        reusable=True,
    )

    def __init__(self, models: ModelsSection | None = None) -> None:
        super().__init__(models)
        self.grounding = GroundingTool(self.models)
        self.segmentation = SegmentationTool(self.models)

    def engines(self) -> list[EngineStatus]:
        """Each segmentation engine behind the grounding engine that would find its boxes."""
        grounding_engines = self.grounding.engines()
        grounding = next((e for e in grounding_engines if e.ready), grounding_engines[0])
        return [
            EngineStatus(
                f"{grounding.name} + {segmentation.name}",
                segmentation.kind,
                grounding.ready and segmentation.ready,
                segmentation.reason if grounding.ready else f"{grounding.name}: {grounding.reason}",
            )
            for segmentation in self.segmentation.engines()
        ]

    def engines_that_may_run(self) -> set[str]:
        """Every grounding engine that may find the boxes with every segmentation engine that may fill them
        (``engines()`` names only the first ready grounding engine's pairs)."""
        return {
            f"{grounding} + {segmentation}"
            for grounding in self.grounding.engines_that_may_run()
            for segmentation in self.segmentation.engines_that_may_run()
        }

    def load(self) -> None:
        self.grounding.load()
        self.segmentation.load()

    def run(self, tool_input: ToolInput) -> ToolResult:
        grounded = self.grounding.run(tool_input)
        if grounded.status is not ToolStatus.OK:
            return grounded
        segmented = self.segmentation.segment(tool_input, grounded.boxes)
        segmented.engine = f"{grounded.engine} + {segmented.engine}"
        if segmented.status is ToolStatus.OK:
            segmented.engine_version = f"{grounded.engine_version} + {segmented.engine_version}"
        return segmented
