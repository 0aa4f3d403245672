"""The ``segmentation`` tool: box prompts to masks, with LiteMedSAM."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tools.base import Box, Measurement, Queue, Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.segmentation import litemedsam

BOX_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "minLength": 1},
        "frame": {"type": "integer", "minimum": 0},
        "xyxy": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
    },
    "required": ["label", "frame", "xyxy"],
}

PARAMETERS = {
    "type": "object",
    "properties": {
        "boxes": {"type": "array", "items": BOX_SCHEMA, "minItems": 1},
        "window": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
    },
    "required": ["boxes"],
    "additionalProperties": False,
}


def window_for(label: str, modality: str) -> tuple[float, float] | None:
    """The (level, width) that shows a structure: the lung window for lungs and airways on CT."""
    if modality != "CT":
        return None
    if any(word in label for word in ("lung", "airway", "trachea")):
        return litemedsam.LUNG_WINDOW
    return litemedsam.SOFT_TISSUE_WINDOW


def volume_measurements(
    masks: dict[str, np.ndarray], spacing: tuple[float, float, float] | None
) -> list[Measurement]:
    """Volume (mL) of each 3D mask: voxel count times the voxel volume from the real slice distance.

    Empty when the spacing is unknown: no volume is better than a guessed one.
    """
    if spacing is None:
        return []
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    return [
        Measurement(label=label, name="Volume", value=float(mask.sum()) * voxel_ml, unit="mL")
        for label, mask in masks.items()
    ]


class SegmentationTool(Tool):
    """Segments what each box on a frame contains; a volume is segmented frame by frame."""

    card = ToolCard(
        name="segmentation",
        description=(
            "Segment the structure inside each given box (pixel x0,y0,x1,y1 on one frame) and return a mask "
            "per label. Needs boxes, e.g. from grounding."
        ),
        tasks=("segmentation",),
        modalities=("CT", "MR", "CR", "DX", "US", "SM", "XA", "MG", "PT"),
        parameters=PARAMETERS,
        outputs=("masks", "measurements"),
        queue=Queue.GPU,
        aliases=("medsam",),
    )

    def readiness(self) -> tuple[bool, str]:
        return litemedsam.readiness()

    def run(self, tool_input: ToolInput) -> ToolResult:
        ready, reason = self.readiness()
        if not ready:
            return ToolResult(status=ToolStatus.UNAVAILABLE, engine=litemedsam.ENGINE_NAME, error=reason)
        frames, rows, columns = tool_input.image.shape
        boxes = [
            b
            if isinstance(b, Box)
            else Box(b["label"], int(b["frame"]), tuple(b["xyxy"]), 1.0, rows, columns)
            for b in tool_input.params["boxes"]
        ]
        for box in boxes:
            if not 0 <= box.frame < frames:
                return ToolResult.failed(
                    litemedsam.ENGINE_NAME, f"box on frame {box.frame} is outside 0..{frames - 1}"
                )
        return segment_boxes(tool_input, boxes)


def segment_boxes(tool_input: ToolInput, boxes: list[Box]) -> ToolResult:
    """Run LiteMedSAM for every box; the masks are cut to the box so nothing leaks into a neighbour."""
    frames, rows, columns = tool_input.image.shape
    window_param = tool_input.params.get("window")
    labels = list(dict.fromkeys(box.label for box in boxes))
    masks = {label: np.zeros((frames, rows, columns), dtype=bool) for label in labels}
    by_window: dict[tuple[float, float] | None, list[Box]] = defaultdict(list)
    for box in boxes:
        window = tuple(window_param) if window_param else window_for(box.label, tool_input.modality)
        by_window[window].append(box)
    for window, window_boxes in by_window.items():
        per_frame: dict[int, list[Box]] = defaultdict(list)
        for box in window_boxes:
            per_frame[box.frame].append(box)
        predicted = litemedsam.segment_frames(
            tool_input.image,
            {frame: [b.xyxy for b in frame_boxes] for frame, frame_boxes in per_frame.items()},
            window,
            device=tool_input.device,
        )
        for frame, frame_boxes in per_frame.items():
            for box, mask in zip(frame_boxes, predicted[frame], strict=True):
                x0, y0, x1, y1 = (int(round(v)) for v in box.xyxy)
                inside = np.zeros((rows, columns), dtype=bool)
                inside[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
                masks[box.label][frame] |= mask & inside
    return ToolResult(
        status=ToolStatus.OK,
        engine=litemedsam.ENGINE_NAME,
        engine_version=litemedsam.engine_version(),
        masks=masks,
        boxes=boxes,
        measurements=volume_measurements(masks, tool_input.spacing),
    )
