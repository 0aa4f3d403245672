"""LiteMedSAM with the real packaged weights on a real CT."""

import numpy as np

from config.settings import ModelsSection
from tools.base import Box, ToolInput, ToolResult, ToolStatus
from tools.grounded_segmentation import GroundedSegmentationTool
from tools.grounding.hounsfield import boxes_per_slice, lung_masks
from tools.segmentation import SegmentationTool, litemedsam


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_readiness_finds_the_packaged_checkpoint() -> None:
    ready, reason = litemedsam.readiness()
    assert ready, reason
    assert litemedsam.checkpoint_path().stat().st_size == 39370479


def test_box_prompt_segments_the_lung_inside_it(chest_ct, tmp_path) -> None:
    coarse = lung_masks(chest_ct.array, chest_ct.row_direction)
    frame = 30
    boxes = [
        Box(label, frame, tuple(float(v) for v in boxes_per_slice(coarse[label])[frame]), 1.0, 512, 512)
        for label in ("left lung", "right lung")
    ]
    tool_input = ToolInput(
        image=chest_ct.array,
        spacing=chest_ct.spacing,
        modality="CT",
        params={"boxes": [b.__dict__ for b in boxes]},
    )
    result = SegmentationTool().run(tool_input)
    assert result.status is ToolStatus.OK
    assert result.engine == "LiteMedSAM"
    for label in ("left lung", "right lung"):
        predicted = result.masks[label]
        assert predicted[frame].sum() > 2000
        assert not np.delete(predicted, frame, axis=0).any()
        assert _dice(predicted[frame], coarse[label][frame]) > 0.9
        volume = next(m for m in result.measurements if m.label == label)
        assert volume.unit == "mL"
        assert volume.value == predicted.sum() * 5 * 0.78125**2 / 1000
    result.save(tmp_path / "result")
    again = ToolResult.load(tmp_path / "result")
    assert np.array_equal(again.masks["left lung"], result.masks["left lung"])
    assert again.boxes == result.boxes and again.measurements == result.measurements


def test_boxes_outside_the_volume_fail_with_a_reason(chest_ct) -> None:
    tool_input = ToolInput(
        image=chest_ct.array[:2],
        spacing=chest_ct.spacing,
        modality="CT",
        params={"boxes": [{"label": "x", "frame": 7, "xyxy": [0, 0, 10, 10]}]},
    )
    result = SegmentationTool().run(tool_input)
    assert result.status is ToolStatus.FAILED and "frame 7" in result.error


def test_grounded_segmentation_names_both_engines_and_fills_every_grounded_slice(chest_ct) -> None:
    slab = slice(28, 31)
    tool_input = ToolInput(
        image=chest_ct.array[slab],
        spacing=chest_ct.spacing,
        modality="CT",
        row_direction=tuple(chest_ct.row_direction),
        params={"prompts": ["lungs"]},
    )
    result = GroundedSegmentationTool(ModelsSection(device="cpu")).run(tool_input)
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "CT Hounsfield anatomy + LiteMedSAM"
    assert result.engine_version.endswith(f" + {litemedsam.engine_version()}")
    for label in ("left lung", "right lung"):
        assert (result.masks[label].sum(axis=(1, 2)) > 2000).all(), label
        assert {b.frame for b in result.boxes if b.label == label} == {0, 1, 2}
