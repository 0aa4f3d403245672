"""A classical grounding engine for CT: anatomy from Hounsfield ranges and connected components.

It is named as what it is (``CT Hounsfield anatomy``) in every output. Structures it knows:

* ``body``: voxels above -500 HU, holes filled per slice, the largest 3D component;
* ``left lung`` / ``right lung``: air-density voxels (below -400 HU) inside the body, the large
  components only (bowel gas and small pockets dropped), split at the body's sagittal midline and named
  by the patient's side from the image orientation;
* ``bone``: voxels above 250 HU inside the body, the connected structures of at least 0.5 mL (100 voxels
  when the voxel size is unknown), so that specks (small calcifications, noise) are dropped; contrast-filled
  vessels and large calcifications above 250 HU are not told apart from bone;
* ``air``: gas inside the body that is not lung: pockets of air-density voxels (below -400 HU, with a core
  below -800 HU) inside the body, more than 2 pixels from the lungs and 3 pixels from the skin, of at least
  0.05 mL (10 voxels when the voxel size is unknown): the trachea and main bronchi (when the pixel spacing
  is known; otherwise they count as lung), the oesophagus, stomach and bowel gas, free air, and
  subcutaneous emphysema. Air outside the patient is never included; air caught between an arm and the
  trunk that the body outline encloses is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ENGINE_NAME = "CT Hounsfield anatomy"
ENGINE_VERSION = "1.0"
BODY_HU = -500.0
AIR_HU = -400.0

BONE_HU = 250.0

KNOWN_STRUCTURES = ("body", "left lung", "right lung", "bone", "air")

#: The smallest bone structure and gas pocket kept, in mL, and in voxels when the voxel size is unknown.
BONE_MIN_ML, BONE_MIN_VOXELS = 0.5, 100
AIR_MIN_ML, AIR_MIN_VOXELS = 0.05, 10
#: Air within this many pixels of a lung (in-plane) is the lung's partial-volume rim, not separate air;
#: within this many pixels of the body outline it is the skin surface; a pocket is gas only around a core.
LUNG_RIM_PIXELS = 2
BODY_SURFACE_PIXELS = 3
AIR_CORE_HU = -800.0


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
    hounsfield: np.ndarray,
    row_direction: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
    body: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Coarse left and right lung masks; empty masks when the volume holds no lungs.

    With ``pixel_spacing`` (mm) the trachea and main bronchi are removed first (small air regions near the
    midline); without it they stay, since their size cannot be judged. ``body`` is ``body_mask``'s result
    when the caller has it already.
    """
    body = body_mask(hounsfield) if body is None else body
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


def _components_at_least(mask: np.ndarray, minimum_voxels: float) -> np.ndarray:
    """The 3D connected components of ``mask`` (26-connected) with at least ``minimum_voxels`` voxels."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, count + 1))
    return np.isin(labelled, np.flatnonzero(sizes >= minimum_voxels) + 1)


def _minimum_voxels(
    minimum_ml: float,
    fallback_voxels: int,
    pixel_spacing: tuple[float, float] | None,
    slice_distance: float | None,
) -> float:
    """A size limit in voxels: from mL when the voxel size is known, else the fixed voxel count."""
    if pixel_spacing is None or slice_distance is None:
        return fallback_voxels
    voxel_ml = slice_distance * pixel_spacing[0] * pixel_spacing[1] / 1000.0
    return max(minimum_ml / voxel_ml, 1.0)


def bone_mask(
    hounsfield: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
    slice_distance: float | None = None,
    body: np.ndarray | None = None,
) -> np.ndarray:
    """Bone: voxels above 250 HU inside the body, in connected structures of at least 0.5 mL.

    Thin cortex (ribs) must survive, so there is no opening; the size limit alone drops specks.
    """
    body = body_mask(hounsfield) if body is None else body
    dense = (hounsfield > BONE_HU) & body
    return _components_at_least(
        dense, _minimum_voxels(BONE_MIN_ML, BONE_MIN_VOXELS, pixel_spacing, slice_distance)
    )


def air_mask(
    hounsfield: np.ndarray,
    lungs: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
    slice_distance: float | None = None,
    body: np.ndarray | None = None,
) -> np.ndarray:
    """Gas inside the body that is not lung (airways, oesophagus, bowel, free air); see the module docstring.

    Three kinds of partial-volume voxels below -400 HU are not air and are left out: the lungs' own rim
    (within ``LUNG_RIM_PIXELS`` of ``lungs``, the union of both lung masks), the skin surface (within
    ``BODY_SURFACE_PIXELS`` of the body outline, where skin folds and the table meet the body) and
    pockets without a gas core (no voxel below ``AIR_CORE_HU``).
    """
    body = body_mask(hounsfield) if body is None else body
    rim = 2 * LUNG_RIM_PIXELS + 1
    near_lungs = ndimage.binary_dilation(lungs, structure=np.ones((1, rim, rim), bool))
    surface = 2 * BODY_SURFACE_PIXELS + 1
    inner_body = ndimage.binary_erosion(body, structure=np.ones((1, surface, surface), bool))
    gas = (hounsfield < AIR_HU) & inner_body & ~near_lungs
    labelled, count = ndimage.label(gas, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return gas
    numbers = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(gas, labelled, index=numbers)
    cores = ndimage.minimum(hounsfield, labelled, index=numbers)
    minimum = _minimum_voxels(AIR_MIN_ML, AIR_MIN_VOXELS, pixel_spacing, slice_distance)
    return np.isin(labelled, numbers[(sizes >= minimum) & (np.asarray(cores) < AIR_CORE_HU)])


def ground(
    hounsfield: np.ndarray,
    prompts: list[str],
    row_direction: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
    slice_distance: float | None = None,
) -> dict[str, np.ndarray]:
    """Coarse masks for each known prompt (normalised, lower case); unknown prompts are ignored.

    ``pixel_spacing`` (row, column) and ``slice_distance`` are in mm; without them the airways stay in the
    lungs and size limits fall back to voxel counts.
    """
    masks: dict[str, np.ndarray] = {}
    wanted = set(prompts)
    body = body_mask(hounsfield)
    if wanted & {"left lung", "right lung", "air"}:
        lungs = lung_masks(hounsfield, row_direction, pixel_spacing, body)
        masks.update({k: v for k, v in lungs.items() if k in wanted})
        if "air" in wanted:
            both = lungs["left lung"] | lungs["right lung"]
            masks["air"] = air_mask(hounsfield, both, pixel_spacing, slice_distance, body)
    if "bone" in wanted:
        masks["bone"] = bone_mask(hounsfield, pixel_spacing, slice_distance, body)
    if "body" in wanted:
        masks["body"] = body
    return masks
