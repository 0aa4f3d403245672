"""Grounded segmentation on a real chest radiograph: classical lung-field boxes, LiteMedSAM inside them."""

import numpy as np
import pytest
from scipy import ndimage

from tools.base import ToolInput, ToolStatus
from tools.grounded_segmentation import GroundedSegmentationTool
from tools.segmentation import SegmentationTool


@pytest.fixture(scope="module")
def segmented(chest_cr):
    tool_input = ToolInput(
        image=chest_cr.display_array(),  # MONOCHROME1 shown the right way round: air dark
        spacing=chest_cr.spacing,
        modality="CR",
        row_direction=tuple(chest_cr.row_direction),
        column_direction=tuple(chest_cr.column_direction),
        params={"prompts": ["lung fields"]},
        metadata={"ViewPosition": "PA"},
    )
    return GroundedSegmentationTool().run(tool_input)


def test_each_lung_field_is_segmented_inside_its_box(chest_cr, segmented) -> None:
    assert segmented.status is ToolStatus.OK, segmented.error
    assert segmented.engine.startswith("Chest radiograph lung fields + ")
    assert set(segmented.masks) == {"left lung", "right lung"}
    rows, columns = chest_cr.array.shape[1:]
    for box in segmented.boxes:
        mask = segmented.masks[box.label]
        assert mask.shape == (1, rows, columns)
        x0, y0, x1, y1 = (int(round(v)) for v in box.xyxy)
        inside_box = np.zeros_like(mask)
        inside_box[0, y0 : y1 + 1, x0 : x1 + 1] = True
        assert not (mask & ~inside_box).any(), box.label
        box_area = (x1 - x0 + 1) * (y1 - y0 + 1)
        assert 0.3 * box_area < mask.sum() < 0.95 * box_area, (box.label, mask.sum(), box_area)
    assert not (segmented.masks["left lung"] & segmented.masks["right lung"]).any()
    # the patient's left lung lies on the image's right (Patient Orientation L\F)
    left_columns = np.nonzero(segmented.masks["left lung"][0])[1]
    right_columns = np.nonzero(segmented.masks["right lung"][0])[1]
    assert right_columns.max() < columns / 2 < left_columns.min()
    assert segmented.measurements == []  # a radiograph has no slice distance: no volumes are guessed


def test_each_lung_field_is_darker_than_its_surroundings(chest_cr, segmented) -> None:
    shown = chest_cr.display_array()[0]
    for label, mask in segmented.masks.items():
        ring = ndimage.binary_dilation(mask[0], iterations=40) & ~mask[0]
        assert shown[mask[0]].mean() < shown[ring].mean() - 0.05, label


def test_a_click_in_a_lung_field_segments_that_lung_field(chest_cr, segmented) -> None:
    """A point prompt on the radiograph: the mask covers most of the lung field found from the box, and no more."""
    lung = segmented.masks["right lung"][0]
    distance = ndimage.distance_transform_edt(lung)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    tool_input = ToolInput(
        image=chest_cr.display_array(),
        spacing=chest_cr.spacing,
        modality="CR",
        params={"points": [{"label": "right lung", "frame": 0, "xy": [float(x), float(y)]}]},
    )
    result = SegmentationTool().run(tool_input)
    assert result.status is ToolStatus.OK, result.error
    clicked = result.masks["right lung"][0]
    overlap = 2 * float((clicked & lung).sum()) / float(clicked.sum() + lung.sum())
    print(f"Dice of the clicked right lung field against the box-prompted one: {overlap:.3f}")
    assert clicked[y, x] and overlap >= 0.8
    assert not (clicked & segmented.masks["left lung"][0]).any()


def test_the_engine_that_ran_on_the_radiograph_is_one_that_may_run(segmented) -> None:
    # a job's finished action is reused only when its engine is one the tool may still run: the radiograph
    # grounding runs when the CT one (listed first) declines, so its pairs must be among them
    tool = GroundedSegmentationTool()
    may_run = tool.engines_that_may_run()
    assert segmented.engine in may_run
    assert {name.split(" + ")[0] for name in may_run} >= {
        "CT Hounsfield anatomy",
        "Chest radiograph lung fields",
    }
    assert segmented.engine not in {engine.name for engine in tool.engines()}  # what the listing alone missed
