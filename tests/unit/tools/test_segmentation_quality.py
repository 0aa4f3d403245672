"""LiteMedSAM's lung masks on a real chest CT, prompted by the CT-anatomy grounding or by one click per lung,
against a threshold mask.

The reference is derived here, independently of ``tools.grounding``: air-density voxels inside the body,
split into the patient's left and right lung. LiteMedSAM costs about a second per slice on two CPU cores,
so every fifth slice through the lungs is segmented and scored.
"""

import numpy as np
from scipy import ndimage

from config.settings import ModelsSection
from tools.base import ToolInput, ToolStatus
from tools.grounding import GroundingTool
from tools.segmentation import SegmentationTool

LUNGS = ("left lung", "right lung")
EVERY_NTH_SLICE = 5


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == int(np.argmax(sizes)) + 1


def reference_lungs(hounsfield: np.ndarray, row_direction, column_spacing_mm: float) -> dict[str, np.ndarray]:
    """Left and right lung from Hounsfield units alone.

    Body: above -500 HU, holes filled per slice, the largest 3D component. Lungs: below -400 HU inside the
    body, 3D components of at least 1 % of the body. Per slice, each air region is a lung when its centre
    lies more than 25 mm from the body's midline (nearer are the trachea and main bronchi), its holes
    (vessels) filled, and it is named by its side: columns grow towards the patient's left when the row
    direction's x is positive (LPS).
    """
    body = _largest_component(np.stack([ndimage.binary_fill_holes(s) for s in hounsfield > -500]))
    labelled, _ = ndimage.label((hounsfield < -400) & body)
    sizes = np.bincount(labelled.ravel())[1:]
    air = np.isin(labelled, np.flatnonzero(sizes >= 0.01 * body.sum()) + 1)
    columns = np.flatnonzero(body.any(axis=(0, 1)))
    midline = (columns.min() + columns.max()) / 2
    left_is_high = row_direction[0] >= 0
    lungs = {label: np.zeros_like(air) for label in LUNGS}
    for index, section in enumerate(air):
        regions, count = ndimage.label(section)
        for number in range(1, count + 1):
            region = regions == number
            centre = ndimage.center_of_mass(region)[1]
            if abs(centre - midline) * column_spacing_mm <= 25:
                continue
            side = "left lung" if (centre > midline) == left_is_high else "right lung"
            lungs[side][index] |= ndimage.binary_fill_holes(region)
    return lungs


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_litemedsam_lungs_from_grounded_boxes_match_the_threshold_lungs(chest_ct) -> None:
    models = ModelsSection(device="cpu")
    tool_input = ToolInput(
        image=chest_ct.array,
        spacing=chest_ct.spacing,
        modality="CT",
        row_direction=tuple(chest_ct.row_direction),
        column_direction=tuple(chest_ct.column_direction),
        params={"prompts": list(LUNGS)},
    )
    grounded = GroundingTool(models).run(tool_input)
    assert grounded.status is ToolStatus.OK, grounded.error
    through_lungs = sorted({box.frame for box in grounded.boxes})
    frames = through_lungs[EVERY_NTH_SLICE // 2 :: EVERY_NTH_SLICE]
    boxes = [box for box in grounded.boxes if box.frame in frames]
    assert len(frames) >= 8 and {box.label for box in boxes} == set(LUNGS)

    tool_input.params = {"boxes": [{"label": b.label, "frame": b.frame, "xyxy": list(b.xyxy)} for b in boxes]}
    result = SegmentationTool(models).run(tool_input)
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "LiteMedSAM"

    reference = reference_lungs(chest_ct.array, chest_ct.row_direction, chest_ct.spacing[2])
    scores = {label: dice(result.masks[label][frames], reference[label][frames]) for label in LUNGS}
    print(f"Dice on frames {frames}: " + ", ".join(f"{label} {score:.4f}" for label, score in scores.items()))
    for label in LUNGS:
        assert not np.delete(result.masks[label], frames, axis=0).any()
        assert scores[label] >= 0.9, (label, scores)


def test_one_click_in_each_lung_gives_litemedsam_lung_masks_that_match_the_threshold_lungs(chest_ct) -> None:
    """A point prompt: LiteMedSAM gets the box around the region the click seeds (its weights take boxes)."""
    reference = reference_lungs(chest_ct.array, chest_ct.row_direction, chest_ct.spacing[2])
    both = [f for f in range(len(chest_ct.array)) if all(reference[label][f].sum() > 2000 for label in LUNGS)]
    frames = both[len(both) // 4 :: len(both) // 4][:3]
    points = []
    for frame in frames:
        for label in LUNGS:  # the click: the lung pixel farthest from anything else, in the parenchyma
            parenchyma = reference[label][frame] & (chest_ct.array[frame] < -400)
            distance = ndimage.distance_transform_edt(parenchyma)
            y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
            points.append({"label": label, "frame": frame, "xy": [float(x), float(y)]})
    tool_input = ToolInput(
        image=chest_ct.array, spacing=chest_ct.spacing, modality="CT", params={"points": points}
    )
    result = SegmentationTool(ModelsSection(device="cpu")).run(tool_input)
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "LiteMedSAM" and "seeded region growing" in result.text
    assert sorted((b.label, b.frame) for b in result.boxes) == sorted(
        (p["label"], p["frame"]) for p in points
    )
    scores = {label: dice(result.masks[label][frames], reference[label][frames]) for label in LUNGS}
    print(f"Dice from one click per lung on frames {frames}: {scores}")
    for label in LUNGS:
        assert not np.delete(result.masks[label], frames, axis=0).any()
        assert scores[label] >= 0.9, (label, scores)
    assert not (result.masks["left lung"] & result.masks["right lung"]).any()
