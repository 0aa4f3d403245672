"""Outlines of 2D masks for SR SCOORDs: the boundary of the largest connected part, simplified, closed.

Image coordinates follow DICOM: (column, row), the top-left corner of the top-left pixel is (0, 0).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MAX_OUTLINE_POINTS = 200

# Moore neighbourhood, clockwise on screen (rows grow downwards), starting west.
_NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))


def key_slice(mask: np.ndarray) -> int:
    """Index of the slice where ``mask`` ([slice, row, column]) covers the most pixels (the first on ties)."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def _largest_component(image: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(image, structure=np.ones((3, 3), bool))
    if count <= 1:
        return labelled > 0
    sizes = ndimage.sum_labels(image, labelled, index=np.arange(1, count + 1))
    return labelled == int(np.argmax(sizes)) + 1


def _trace_boundary(component: np.ndarray) -> list[tuple[int, int]]:
    """Moore-neighbour tracing of one 8-connected component's outer boundary, as (row, column) pixels."""
    padded = np.pad(component, 1)
    rows, columns = np.nonzero(padded)
    start = (int(rows[0]), int(columns[0]))  # top-most, then left-most: its west neighbour is background
    boundary = [start]
    current, entered_from = start, 0
    second: tuple[int, int] | None = None
    for _ in range(8 * padded.size):
        for step in range(1, 9):
            direction = (entered_from + step) % 8
            candidate = (current[0] + _NEIGHBOURS[direction][0], current[1] + _NEIGHBOURS[direction][1])
            if padded[candidate]:
                previous = (entered_from + step - 1) % 8
                background = (current[0] + _NEIGHBOURS[previous][0], current[1] + _NEIGHBOURS[previous][1])
                offset = (background[0] - candidate[0], background[1] - candidate[1])
                entered_from = _NEIGHBOURS.index(offset)
                break
        else:
            return [(start[0] - 1, start[1] - 1)]  # a single pixel
        if current == start and candidate == second:
            break
        if second is None:
            second = candidate
        current = candidate
        boundary.append(current)
    if len(boundary) > 1 and boundary[-1] == start:
        boundary.pop()
    return [(r - 1, c - 1) for r, c in boundary]


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on an open polyline of (x, y) points, keeping both ends."""
    keep = np.zeros(len(points), bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        segment = points[last] - points[first]
        inner = points[first + 1 : last] - points[first]
        length = float(np.hypot(*segment))
        if length == 0:
            distances = np.hypot(inner[:, 0], inner[:, 1])
        else:
            distances = np.abs(segment[0] * inner[:, 1] - segment[1] * inner[:, 0]) / length
        farthest = int(np.argmax(distances))
        if distances[farthest] > tolerance:
            middle = first + 1 + farthest
            keep[middle] = True
            stack += [(first, middle), (middle, last)]
    return points[keep]


def outline(image: np.ndarray, max_points: int = MAX_OUTLINE_POINTS) -> np.ndarray:
    """Closed outline of the largest connected part of a 2D mask: (n, 2) (column, row), first == last.

    Vertices are boundary pixel centres (x + 0.5, y + 0.5); a part too small to have an outline gets the
    rectangle around it. At most ``max_points`` vertices, the closing one included.
    """
    component = _largest_component(np.asarray(image, bool))
    if not component.any():
        raise ValueError("Invalid 'image' value - the mask is empty, it has no outline")
    boundary = np.array([(c + 0.5, r + 0.5) for r, c in _trace_boundary(component)], dtype=float)
    if len(np.unique(boundary, axis=0)) < 3:
        rows, columns = np.nonzero(component)
        x0, x1, y0, y1 = columns.min(), columns.max() + 1.0, rows.min(), rows.max() + 1.0
        boundary = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)
    closed = np.vstack([boundary, boundary[:1]])
    tolerance = 0.5
    simplified = _simplify(closed, tolerance)
    while len(simplified) > max_points:
        tolerance *= 1.5
        simplified = _simplify(closed, tolerance)
    return simplified


def box_outline(xyxy: tuple[float, float, float, float]) -> np.ndarray:
    """Closed rectangle (5 points, first == last) around the pixels a box covers, as (column, row).

    A box ``(x0, y0, x1, y1)`` covers pixels ``x0..x1`` and ``y0..y1`` inclusive (tools.base), so its edges
    lie at ``x0`` and ``x1 + 1``, ``y0`` and ``y1 + 1`` in DICOM image coordinates.
    """
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"Invalid box {tuple(xyxy)} - x1 must not be less than x0, nor y1 than y0")
    left, top, right, bottom = x0, y0, x1 + 1.0, y1 + 1.0
    return np.array([(left, top), (right, top), (right, bottom), (left, bottom), (left, top)], dtype=float)
