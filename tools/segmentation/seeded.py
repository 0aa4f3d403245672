"""Point prompts for an engine trained with boxes only: the box around the region the points seed.

LiteMedSAM's weights answer a point prompt with a near-empty mask, but segment well inside a box. A click
inside a structure says where it is; seeded region growing on the windowed frame says how far it reaches:
pixels connected to a positive point whose smoothed intensity is within a tolerance of that point's. The
tolerance shrinks while the region swallows a negative point or too much of the frame, or reaches the
frame's edge (where the air around a patient is). The region's
bounding box, padded, becomes the engine's box prompt, and the engine's mask keeps only its parts that
overlap the region, so a neighbour inside the box is not taken along.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tools.segmentation.sam import FramePrompt

#: tolerances on the 0-1 windowed intensity, tried in order: the largest that does not leak wins (a lung
#: field on a radiograph, under its ribs, needs 0.2; a lung on CT with the lung window, 0.1 where the
#: airway joins it to the air around the patient)
TOLERANCES = (0.2, 0.1, 0.05, 0.025)
#: a region larger than this share of the frame has leaked out of its structure
MAX_SHARE = 0.5
#: the seed intensity is the median of this many pixels around each positive point (robust to a vessel)
SEED_SIDE = 7
SMOOTHING_SIGMA = 1.0


def seeded_region(unit_frame: np.ndarray, prompt: FramePrompt) -> np.ndarray:
    """The boolean ``[row, column]`` region that ``prompt``'s points seed in a frame scaled to 0-1.

    ``ValueError`` when no tolerance gives a region that holds a positive point, leaves out every
    negative point and covers at most ``MAX_SHARE`` of the frame.
    """
    if prompt.box is not None or not prompt.points:
        raise ValueError("seeded_region needs a point prompt")
    smooth = ndimage.gaussian_filter(unit_frame.astype(np.float32), SMOOTHING_SIGMA)
    rows, columns = smooth.shape
    pixels = [
        (min(max(int(round(y)), 0), rows - 1), min(max(int(round(x)), 0), columns - 1))
        for x, y in prompt.points
    ]
    inside = [p for p, positive in zip(pixels, prompt.positive, strict=True) if positive]
    outside = [p for p, positive in zip(pixels, prompt.positive, strict=True) if not positive]
    half = SEED_SIDE // 2
    seeds = [
        float(np.median(smooth[max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1]))
        for r, c in inside
    ]
    touching_edge = None
    for tolerance in TOLERANCES:
        region = np.zeros(smooth.shape, dtype=bool)
        for (r, c), seed in zip(inside, seeds, strict=True):
            labelled, _ = ndimage.label(ndimage.binary_opening(np.abs(smooth - seed) <= tolerance))
            if labelled[r, c]:
                region |= labelled == labelled[r, c]
        if not region.any() or any(region[r, c] for r, c in outside) or region.mean() > MAX_SHARE:
            continue
        if not (region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()):
            return region
        if touching_edge is None:
            touching_edge = region
    if touching_edge is not None:
        return touching_edge  # a structure cut by the frame's edge
    raise ValueError(
        f"the points at {[tuple(map(float, p)) for p in prompt.points]} do not seed a region that can be boxed "
        "(the intensity around them leaks into most of the frame or into a negative point); give a box"
    )


def region_box(region: np.ndarray, padding: float = 0.1) -> tuple[float, float, float, float]:
    """The region's bounding box ``(x0, y0, x1, y1)`` in pixels, padded by ``padding`` of its size (at least 4 px): smoothing and opening trim the region's rim."""
    rows = np.flatnonzero(region.any(axis=1))
    columns = np.flatnonzero(region.any(axis=0))
    pad_x = max(4.0, padding * (columns[-1] - columns[0] + 1))
    pad_y = max(4.0, padding * (rows[-1] - rows[0] + 1))
    height, width = region.shape
    return (
        max(0.0, columns[0] - pad_x),
        max(0.0, rows[0] - pad_y),
        min(width - 1.0, columns[-1] + pad_x),
        min(height - 1.0, rows[-1] + pad_y),
    )


def keep_seeded_parts(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that overlap ``region``."""
    labelled, _ = ndimage.label(mask)
    touched = np.unique(labelled[region & mask])
    return np.isin(labelled, touched[touched > 0])
