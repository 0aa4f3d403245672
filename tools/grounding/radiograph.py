"""A classical grounding engine for frontal chest radiographs: the lung fields as the dark regions of the thorax.

It is named as what it is (``Chest radiograph lung fields``) in every output. It works on what a viewer
shows (air dark, bone bright: MONOCHROME1 images must arrive inverted, as ``dicom_node.load``'s
``display_array`` gives them), frame by frame:

1. the frame is scaled to 0-1 (through the source window when there is one, else its 1st-99th
   percentiles), reduced to about 256 pixels on its longer side and smoothed, so that ribs and vessels do
   not cut a lung field into pieces;
2. dark pixels are those below a threshold: Otsu's first, then lower ones (the image's 35th down to 10th
   percentile) until two lung fields are found; a field is a dark region that does not touch the image
   border (the background outside the patient and the air above the shoulders do), covers at least 2 % of
   the image and is taller than 15 % of it;
3. the two largest fields, one on each half of the image, are the lungs; their holes are filled and they are
   named by the patient's side from the row direction (LPS: +x is the patient's left).

The masks are coarse (the lung hidden behind the heart and the diaphragm's dome is not included); they are
meant to give boxes to a segmentation model, not to be measured.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ENGINE_NAME = "Chest radiograph lung fields"
ENGINE_VERSION = "1.0"
KNOWN_STRUCTURES = ("left lung", "right lung")
MODALITIES = ("CR", "DX")
#: View positions of a lateral radiograph, on which the lungs overlap and cannot be told apart.
LATERAL_VIEWS = ("LL", "RL", "LLD", "RLD", "LAT", "LATERAL")

WORKING_SIZE = 256
SMOOTHING_SIGMA = 2.0  # in working pixels: about 0.8 % of the image
FALLBACK_PERCENTILES = (35.0, 30.0, 25.0, 20.0, 15.0, 10.0)
MINIMUM_AREA_FRACTION = 0.02
MINIMUM_HEIGHT_FRACTION = 0.15


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best separates ``values`` into two classes (Otsu 1979), on a histogram."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    below = np.cumsum(counts)
    above = below[-1] - below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(centres[int(np.argmax(between))])


def working_image(frame: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """``frame`` scaled to 0-1 (window, else 1st-99th percentiles), reduced to ``WORKING_SIZE`` and smoothed."""
    frame = frame.astype(np.float32)
    scale = min(1.0, WORKING_SIZE / max(frame.shape))
    small = ndimage.zoom(frame, scale, order=1) if scale < 1.0 else frame
    if window is not None:
        level, width = window
        low, high = level - width / 2.0, level + width / 2.0
    else:
        low, high = (float(v) for v in np.percentile(small, [1.0, 99.0]))
    unit = np.clip((small - low) / max(high - low, 1e-6), 0.0, 1.0)
    return ndimage.gaussian_filter(unit, SMOOTHING_SIGMA)


def _touches_border(labelled: np.ndarray) -> set[int]:
    edges = np.concatenate([labelled[0], labelled[-1], labelled[:, 0], labelled[:, -1]])
    return {int(v) for v in np.unique(edges)} - {0}


def two_fields(dark: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The largest dark field on the low-column half and on the high-column half, or None without both.

    Fields that touch the border, cover under 2 % of the image or are shorter than 15 % of it are no lung.
    """
    labelled, count = ndimage.label(dark)
    if count < 2:
        return None
    numbers = np.arange(1, count + 1)
    areas = ndimage.sum_labels(dark, labelled, index=numbers)
    centres = ndimage.center_of_mass(dark, labelled, index=numbers)
    extents = ndimage.find_objects(labelled)
    border = _touches_border(labelled)
    rows, columns = dark.shape
    best: dict[bool, tuple[float, int]] = {}
    for number, area, (_, column), extent in zip(numbers, areas, centres, extents, strict=True):
        height = extent[0].stop - extent[0].start
        if number in border or area < MINIMUM_AREA_FRACTION * dark.size:
            continue
        if height < MINIMUM_HEIGHT_FRACTION * rows:
            continue
        high_half = column >= columns / 2.0
        if area > best.get(high_half, (0.0, 0))[0]:
            best[high_half] = (float(area), int(number))
    if len(best) < 2:
        return None
    low_field = ndimage.binary_fill_holes(labelled == best[False][1])
    high_field = ndimage.binary_fill_holes(labelled == best[True][1])
    return low_field, high_field


def _thresholds(smooth: np.ndarray) -> list[float]:
    """Otsu's threshold, then lower percentiles: a lung that merges with the background splits off lower."""
    otsu = otsu_threshold(smooth)
    lower = [float(t) for t in np.percentile(smooth, FALLBACK_PERCENTILES) if t < otsu]
    return [otsu, *lower]


def _to_frame_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    zoomed = ndimage.zoom(
        mask.astype(np.float32), (shape[0] / mask.shape[0], shape[1] / mask.shape[1]), order=1
    )
    result = np.zeros(shape, dtype=bool)
    rows, columns = min(shape[0], zoomed.shape[0]), min(shape[1], zoomed.shape[1])
    result[:rows, :columns] = zoomed[:rows, :columns] >= 0.5
    return result


def lung_fields(
    frame: np.ndarray, row_direction: np.ndarray, window: tuple[float, float] | None = None
) -> dict[str, np.ndarray]:
    """Coarse left and right lung-field masks of one frontal frame ``[row, column]``; empty when not found.

    ``frame`` is display-oriented (air dark); ``row_direction`` is the patient-space direction of
    increasing column, whose x component tells which side of the image is the patient's left.
    """
    smooth = working_image(frame, window)
    for threshold in _thresholds(smooth):
        fields = two_fields(smooth < threshold)
        if fields is not None:
            break
    else:
        empty = np.zeros(frame.shape, dtype=bool)
        return {"left lung": empty, "right lung": empty.copy()}
    low_field, high_field = (_to_frame_size(field, frame.shape) for field in fields)
    high_columns_are_left = float(row_direction[0]) >= 0
    if high_columns_are_left:
        return {"left lung": high_field, "right lung": low_field}
    return {"left lung": low_field, "right lung": high_field}


def ground(
    image: np.ndarray,
    prompts: list[str],
    row_direction: np.ndarray,
    window: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """Masks ``[frame, row, column]`` for each known prompt (normalised, lower case), frame by frame."""
    wanted = [p for p in prompts if p in KNOWN_STRUCTURES]
    masks = {label: np.zeros(image.shape, dtype=bool) for label in wanted}
    if not wanted:
        return masks
    for index, frame in enumerate(image):
        fields = lung_fields(frame, row_direction, window)
        for label in wanted:
            masks[label][index] = fields[label]
    return masks


def refusal(modality: str, row_direction: tuple[float, float, float], metadata: dict[str, str]) -> str:
    """Why this engine cannot work on such an image, or "" when it can."""
    if modality not in MODALITIES:
        return f"works on CR and DX radiographs only, not {modality or 'unknown'} images"
    view = metadata.get("ViewPosition", "").strip().upper()
    if view in LATERAL_VIEWS:
        return f"needs a frontal (PA or AP) chest radiograph, not a {view} view"
    if abs(float(row_direction[0])) < 0.5:
        return (
            f"needs an image whose rows run across the patient (left-right); its row direction is "
            f"{tuple(round(float(v), 2) for v in row_direction)}"
        )
    return ""
