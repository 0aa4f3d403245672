"""A classical grounding engine for CT: anatomy from Hounsfield ranges and connected components.

It is named as what it is (``CT Hounsfield anatomy``) in every output. Structures it knows:

* ``body``: voxels above -500 HU, holes filled per slice, the largest 3D component;
* ``left lung`` / ``right lung``: air-density voxels (below -400 HU) inside the body, the large
  components only (bowel gas and small pockets dropped), split at the body's sagittal midline and named
  by the patient's side from the image orientation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ENGINE_NAME = "CT Hounsfield anatomy"
ENGINE_VERSION = "1.0"
BODY_HU = -500.0
AIR_HU = -400.0

KNOWN_STRUCTURES = ("body", "left lung", "right lung")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, count + 1))
    return labelled == (int(np.argmax(sizes)) + 1)


def body_mask(hounsfield: np.ndarray) -> np.ndarray:
    """The patient's body: dense voxels, holes filled slice by slice, the largest component."""
    dense = hounsfield > BODY_HU
    dense = ndimage.binary_opening(dense, structure=np.ones((1, 3, 3), bool))
    filled = np.stack([ndimage.binary_fill_holes(s) for s in dense])
    return _largest_component(filled)


#: The trachea and main bronchi, in one slice: a small air region near the midline.
AIRWAY_MAX_AREA_MM2 = 1000.0
AIRWAY_MAX_MIDLINE_DISTANCE_MM = 25.0


def remove_airways(lungs: np.ndarray, midline: float, pixel_spacing: tuple[float, float]) -> np.ndarray:
    """Drop, slice by slice, small air regions whose centre lies near the midline (trachea, bronchi)."""
    row_spacing, column_spacing = pixel_spacing
    result = lungs.copy()
    for index in np.flatnonzero(lungs.any(axis=(1, 2))):
        labelled, count = ndimage.label(lungs[index])
        if count == 0:
            continue
        areas = (
            ndimage.sum_labels(lungs[index], labelled, index=np.arange(1, count + 1))
            * row_spacing
            * column_spacing
        )
        centres = ndimage.center_of_mass(lungs[index], labelled, index=np.arange(1, count + 1))
        for number, (area, (_, column)) in enumerate(zip(areas, centres, strict=True), start=1):
            near_midline = abs(column - midline) * column_spacing <= AIRWAY_MAX_MIDLINE_DISTANCE_MM
            if area <= AIRWAY_MAX_AREA_MM2 and near_midline:
                result[index][labelled == number] = False
    return result


def lung_masks(
    hounsfield: np.ndarray, row_direction: np.ndarray, pixel_spacing: tuple[float, float] | None = None
) -> dict[str, np.ndarray]:
    """Coarse left and right lung masks; empty masks when the volume holds no lungs.

    With ``pixel_spacing`` (mm) the trachea and main bronchi are removed first (small air regions near the
    midline); without it they stay, since their size cannot be judged.
    """
    body = body_mask(hounsfield)
    air = (hounsfield < AIR_HU) & body
    air = ndimage.binary_opening(air, structure=np.ones((1, 3, 3), bool))
    labelled, count = ndimage.label(air)
    if count == 0:
        empty = np.zeros_like(body)
        return {"left lung": empty, "right lung": empty.copy()}
    sizes = ndimage.sum_labels(air, labelled, index=np.arange(1, count + 1))
    candidates = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    # a lung is big: at least 0.5 % of the body volume
    keep = [k for k in candidates if sizes[k - 1] >= 0.005 * body.sum()]
    lungs = np.isin(labelled, keep)
    columns = np.flatnonzero(body.any(axis=(0, 1)))
    midline = (columns.min() + columns.max()) / 2.0 if columns.size else hounsfield.shape[2] / 2.0
    if pixel_spacing is not None:
        lungs = remove_airways(lungs, midline, pixel_spacing)
    high_side = np.zeros_like(lungs)
    high_side[:, :, int(np.ceil(midline)) :] = True
    # LPS: +x is the patient's left. Columns increase along row_direction.
    high_columns_are_left = float(row_direction[0]) >= 0
    left = lungs & (high_side if high_columns_are_left else ~high_side)
    right = lungs & ~left
    return {"left lung": left, "right lung": right}


def boxes_per_slice(
    mask: np.ndarray, minimum_pixels: int = 30, margin: int = 5
) -> dict[int, tuple[int, int, int, int]]:
    """Bounding box ``(x0, y0, x1, y1)`` of ``mask`` on each slice that holds enough of it."""
    boxes = {}
    rows, columns = mask.shape[1:]
    for index in np.flatnonzero(mask.reshape(mask.shape[0], -1).sum(axis=1) >= minimum_pixels):
        ys, xs = np.nonzero(mask[index])
        boxes[int(index)] = (
            max(int(xs.min()) - margin, 0),
            max(int(ys.min()) - margin, 0),
            min(int(xs.max()) + margin, columns - 1),
            min(int(ys.max()) + margin, rows - 1),
        )
    return boxes


def ground(
    hounsfield: np.ndarray,
    prompts: list[str],
    row_direction: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """Coarse masks for each known prompt (normalised, lower case)."""
    masks: dict[str, np.ndarray] = {}
    wanted = set(prompts)
    if wanted & {"left lung", "right lung"}:
        masks.update(
            {k: v for k, v in lung_masks(hounsfield, row_direction, pixel_spacing).items() if k in wanted}
        )
    if "body" in wanted:
        masks["body"] = body_mask(hounsfield)
    return masks
