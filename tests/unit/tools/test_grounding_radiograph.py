"""The classical lung-field engine on a real chest radiograph (Philips CR, PA, MONOCHROME1)."""

import numpy as np
import pytest

from tools.base import ToolInput, ToolStatus
from tools.grounding import GroundingTool


def _input(volume, prompts, **overrides):
    values = dict(
        image=volume.display_array(),  # what a viewer shows: MONOCHROME1 inverted, air dark
        spacing=volume.spacing,
        modality="CR",
        row_direction=tuple(volume.row_direction),
        column_direction=tuple(volume.column_direction),
        params={"prompts": prompts},
        metadata={"ViewPosition": "PA", "BodyPartExamined": "CHEST"},
    )
    values.update(overrides)
    return ToolInput(**values)


@pytest.fixture(scope="module")
def lungs(chest_cr):
    return GroundingTool().run(_input(chest_cr, ["lungs"]))


def test_one_lung_field_per_half_named_by_the_patients_side(chest_cr, lungs) -> None:
    assert lungs.status is ToolStatus.OK, lungs.error
    assert lungs.engine == "Chest radiograph lung fields"
    rows, columns = chest_cr.array.shape[1:]
    assert [b.label for b in lungs.boxes] == ["left lung", "right lung"]
    for box in lungs.boxes:
        x0, y0, x1, y1 = box.xyxy
        assert box.frame == 0 and (box.rows, box.columns) == (rows, columns)
        assert 0 < x0 < x1 < columns - 1 and 0 < y0 < y1 < rows - 1, box  # inside, off the border
        assert x1 - x0 > 0.15 * columns and y1 - y0 > 0.3 * rows, box  # a lung, not a speck
    left, right = lungs.boxes
    # Patient Orientation L\F: columns run to the patient's left, so the left lung is on the image's right
    assert chest_cr.row_direction[0] > 0
    assert left.xyxy[0] > columns / 2 > right.xyxy[2]  # each box wholly on its half
    for label, box in zip(("left lung", "right lung"), lungs.boxes, strict=True):
        mask = lungs.masks[label][0]
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = box.xyxy
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        assert mask.sum() > 0.03 * rows * columns


def test_lungs_are_darker_than_the_mediastinum_between_them(chest_cr, lungs) -> None:
    shown = chest_cr.display_array()[0]
    left, right = lungs.boxes
    top, bottom = int(max(left.xyxy[1], right.xyxy[1])), int(min(left.xyxy[3], right.xyxy[3]))
    mediastinum = shown[top:bottom, int(right.xyxy[2]) : int(left.xyxy[0])]
    for label in ("left lung", "right lung"):
        assert shown[lungs.masks[label][0]].mean() < mediastinum.mean() - 0.1, label


def test_the_stored_polarity_or_a_mirror_image_gives_the_same_fields(chest_cr, lungs) -> None:
    # real-world values of the inverted image with its window give the same fields as the display values
    level, width = chest_cr.window
    negated = GroundingTool().run(
        _input(chest_cr, ["left lung"], image=-chest_cr.array, window=(-level, width))
    )
    assert negated.status is ToolStatus.OK, negated.error
    overlap = (negated.masks["left lung"] & lungs.masks["left lung"]).sum()
    assert overlap > 0.95 * lungs.masks["left lung"].sum()
    # a mirrored image with a mirrored row direction: the patient's left is now on the image's left
    mirrored = GroundingTool().run(
        _input(
            chest_cr,
            ["left lung"],
            image=chest_cr.display_array()[:, :, ::-1],
            row_direction=(-1.0, 0.0, 0.0),
        )
    )
    assert mirrored.status is ToolStatus.OK, mirrored.error
    assert mirrored.boxes[0].xyxy[2] < chest_cr.array.shape[2] / 2
    assert np.array_equal(mirrored.masks["left lung"][0], lungs.masks["left lung"][0][:, ::-1])


def test_images_it_cannot_read_are_refused_or_failed_with_the_reason(chest_cr) -> None:
    lateral = GroundingTool().run(_input(chest_cr, ["lungs"], metadata={"ViewPosition": "LL"}))
    assert lateral.status is ToolStatus.UNAVAILABLE and "frontal" in lateral.error
    liver = GroundingTool().run(_input(chest_cr, ["liver"]))
    assert liver.status is ToolStatus.UNAVAILABLE and "liver" in liver.error
    # the stored MONOCHROME1 values (air bright) shown as they are: no dark lung fields to find
    stored = GroundingTool().run(_input(chest_cr, ["lungs"], image=chest_cr.array, window=chest_cr.window))
    assert stored.status is ToolStatus.FAILED and "air dark" in stored.error
    flat = GroundingTool().run(_input(chest_cr, ["lungs"], image=np.full((1, 300, 300), 0.5, np.float32)))
    assert flat.status is ToolStatus.FAILED and "no left lung, right lung found" in flat.error


def test_the_pipelines_input_finds_the_same_fields(chest_cr, lungs) -> None:
    from dicom_node.pipeline import tool_input_for

    tool_input = tool_input_for(chest_cr, {"prompts": ["lungs"]}, "", "cpu")
    result = GroundingTool().run(tool_input)
    assert result.status is ToolStatus.OK, result.error
    assert [b.label for b in result.boxes] == [b.label for b in lungs.boxes]
    for box, expected in zip(result.boxes, lungs.boxes, strict=True):
        assert np.allclose(box.xyxy, expected.xyxy, atol=20), (box, expected)  # within 1 % of the image
