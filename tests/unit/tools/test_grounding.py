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


def test_bone_is_dense_inside_the_body_and_holds_the_spine(chest_ct) -> None:
    result = GroundingTool().run(_input(chest_ct, ["bones", "body"]))
    assert result.status is ToolStatus.OK, result.error
    bone, body = result.masks["bone"], result.masks["body"]
    assert not (bone & ~body).any()
    assert np.percentile(chest_ct.array[bone], 5) > 250 and np.median(chest_ct.array[bone]) > 400
    volume_ml = bone.sum() * np.prod(chest_ct.spacing) / 1000
    assert 300 < volume_ml < 3000
    # the spine: bone on the body's midline, behind its centre (rows increase to posterior here)
    middle = chest_ct.array.shape[0] // 2
    rows, columns = np.nonzero(body[middle])
    midline, centre_row = (columns.min() + columns.max()) // 2, rows.mean()
    assert chest_ct.column_direction[1] > 0
    assert bone[middle, int(centre_row) :, midline - 10 : midline + 10].sum() > 100
    assert {b.label for b in result.boxes} == {"bone", "body"}


def test_small_dense_specks_are_not_bone() -> None:
    from tools.grounding.hounsfield import bone_mask

    phantom = np.full((10, 64, 64), -1000.0, np.float32)
    phantom[:, 8:56, 8:56] = 40.0  # a soft-tissue block
    phantom[:, 30:34, 30:34] = 700.0  # a rod through every slice: 160 voxels
    phantom[5, 15:17, 15:17] = 700.0  # a speck: 4 voxels
    bone = bone_mask(phantom, pixel_spacing=(1.0, 1.0), slice_distance=5.0)  # 160 voxels = 0.8 mL
    assert bone[:, 30:34, 30:34].all() and not bone[5, 15:17, 15:17].any()
    assert bone.sum() == 160


def test_air_is_gas_inside_the_body_outside_the_lungs(chest_ct) -> None:
    result = GroundingTool().run(_input(chest_ct, ["air", "lungs", "body"]))
    assert result.status is ToolStatus.OK, result.error
    air, body = result.masks["air"], result.masks["body"]
    lungs = result.masks["left lung"] | result.masks["right lung"]
    assert not (air & lungs).any() and not (air & ~body).any()
    assert np.median(chest_ct.array[air]) < -800
    # with the pixel spacing known the trachea is air, not lung: above both apices it is all there is
    top = slice(-5, None)
    assert air[top].sum() > 1000 and lungs[top].sum() == 0
    trachea_columns = np.nonzero(air[top])[2]
    columns = np.nonzero(body[top])[2]
    assert abs(trachea_columns.mean() - (columns.min() + columns.max()) / 2) < 30
    # without it the trachea stays with the lungs (its size cannot be judged), so it is not air
    from tools.grounding.hounsfield import ground

    without_spacing = ground(chest_ct.array, ["air"], chest_ct.row_direction)["air"]
    assert without_spacing[top].sum() < 0.1 * air[top].sum()
    # none of it is the skin's partial-volume rim: every air voxel is 3 pixels or more inside the body
    from scipy import ndimage

    assert not (air & ~ndimage.binary_erosion(body, np.ones((1, 7, 7), bool))).any()


def test_engines_are_listed_in_preference_order() -> None:
    from tools.base import EngineKind

    engines = GroundingTool().engines()
    assert [(e.name, e.kind) for e in engines] == [
        ("Grounding DINO", EngineKind.CONFIGURED),
        ("CT Hounsfield anatomy", EngineKind.CLASSICAL),
        ("Chest radiograph lung fields", EngineKind.CLASSICAL),
    ]
    assert not engines[0].ready and "models.grounding_dino" in engines[0].reason
    assert GroundingTool().readiness() == (True, f"CT Hounsfield anatomy: {engines[1].reason}")
    assert {"CT", "CR", "DX"} <= set(GroundingTool.card.modalities)
