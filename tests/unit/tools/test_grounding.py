import numpy as np

from tools.base import ToolInput, ToolStatus
from tools.grounding import GroundingTool


def _input(volume, prompts, **overrides):
    values = dict(
        image=volume.array,
        spacing=volume.spacing,
        modality="CT",
        row_direction=tuple(volume.row_direction),
        column_direction=tuple(volume.column_direction),
        params={"prompts": prompts},
    )
    values.update(overrides)
    return ToolInput(**values)


def test_lungs_are_found_on_the_patients_sides(chest_ct) -> None:
    result = GroundingTool().run(_input(chest_ct, ["Lungs"]))
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "CT Hounsfield anatomy"
    assert set(result.masks) == {"left lung", "right lung"}
    assert not (result.masks["left lung"] & result.masks["right lung"]).any()
    left_columns = np.nonzero(result.masks["left lung"])[2].mean()
    right_columns = np.nonzero(result.masks["right lung"])[2].mean()
    # Row direction +x (patient left) means the left lung sits at higher columns.
    assert chest_ct.row_direction[0] > 0 and left_columns > right_columns + 100
    for label, mask in result.masks.items():
        assert np.median(chest_ct.array[mask]) < -600, label
    frames = {b.frame for b in result.boxes if b.label == "left lung"}
    assert len(frames) > 30
    box = next(b for b in result.boxes if b.label == "right lung")
    x0, y0, x1, y1 = box.xyxy
    assert 0 <= x0 < x1 < 512 and 0 <= y0 < y1 < 512
    assert all(0 <= v <= 1 for v in box.xyxy_normalised)


def test_flipped_orientation_swaps_the_sides(chest_ct) -> None:
    flipped = chest_ct.array[:, :, ::-1].copy()
    result = GroundingTool().run(
        _input(chest_ct, ["left lung"], image=flipped, row_direction=(-1.0, 0.0, 0.0))
    )
    original = GroundingTool().run(_input(chest_ct, ["left lung"]))
    assert np.array_equal(result.masks["left lung"], original.masks["left lung"][:, :, ::-1])


def test_unsupported_requests_say_why(chest_ct) -> None:
    mr = GroundingTool().run(_input(chest_ct, ["left lung"], modality="MR"))
    assert mr.status is ToolStatus.UNAVAILABLE and "CT only" in mr.error
    liver = GroundingTool().run(_input(chest_ct, ["liver"]))
    assert liver.status is ToolStatus.UNAVAILABLE and "liver" in liver.error
    air = GroundingTool().run(
        _input(chest_ct, ["left lung"], image=np.full((3, 64, 64), -1000.0, np.float32))
    )
    assert air.status is ToolStatus.FAILED and "no left lung found" in air.error


def test_trachea_is_not_taken_for_a_lung_when_the_pixel_spacing_is_known(chest_ct) -> None:
    from tools.grounding.hounsfield import lung_masks

    with_spacing = lung_masks(chest_ct.array, chest_ct.row_direction, chest_ct.spacing[1:])
    without = lung_masks(chest_ct.array, chest_ct.row_direction)
    top = slice(-8, None)  # above the lung apices of this series only the airway holds air
    assert without["right lung"][top].sum() > 1000  # the trachea, labelled by its side of the midline
    assert with_spacing["right lung"][top].sum() == 0
    # the lungs themselves are untouched: within 3 % of the volume without airway removal
    for label in ("left lung", "right lung"):
        assert abs(int(with_spacing[label].sum()) - int(without[label].sum())) < 0.03 * without[label].sum()
