"""Point prompts turned into boxes: the region a click seeds, its box, and the parts of a mask it keeps."""

import numpy as np
import pytest

from tools.segmentation.sam import FramePrompt
from tools.segmentation.seeded import keep_seeded_parts, region_box, seeded_region


def two_discs() -> np.ndarray:
    """A 0-1 frame: a bright disc (radius 12 at x 20, y 30) and a dimmer one (radius 8 at x 60, y 30)."""
    rows, columns = np.mgrid[:64, :96]
    frame = np.full((64, 96), 0.1, np.float32)
    frame[(columns - 20) ** 2 + (rows - 30) ** 2 <= 12**2] = 0.8
    frame[(columns - 60) ** 2 + (rows - 30) ** 2 <= 8**2] = 0.5
    return frame


def click(*points: tuple[float, float, bool]) -> FramePrompt:
    return FramePrompt(points=tuple((x, y) for x, y, _ in points), positive=tuple(p for _, _, p in points))


def test_a_click_seeds_the_structure_under_it_and_its_box_is_padded_around_it() -> None:
    region = seeded_region(two_discs(), click((22, 28, True)))
    disc = two_discs() == 0.8
    assert (region & disc).sum() >= 0.75 * disc.sum() and not (region & ~disc).any()  # smoothing eats its rim
    assert not region[:, 45:].any()  # the other disc is not reached
    x0, y0, x1, y1 = region_box(region)
    assert x0 < 8 and y0 < 18 and x1 > 32 and y1 > 42  # the box holds the whole disc ...
    assert x0 > 8 - 8 and y0 > 18 - 8 and x1 < 32 + 8 and y1 < 42 + 8  # ... and little else


def test_two_clicks_seed_both_structures() -> None:
    region = seeded_region(two_discs(), click((20, 30, True), (60, 30, True)))
    assert region[30, 20] and region[30, 60] and not region[5, 5]


def test_a_negative_point_in_the_seeded_region_narrows_it_or_the_click_fails() -> None:
    frame = two_discs()
    frame[30, 5:90] = 0.45  # a faint bridge from the dim disc along the row
    with pytest.raises(ValueError, match="give a box"):
        seeded_region(
            np.full((64, 96), 0.3, np.float32), click((40, 40, True))
        )  # a blank frame leaks everywhere
    narrowed = seeded_region(frame, click((60, 30, True), (85, 30, False)))
    assert narrowed[30, 60] and not narrowed[30, 85]


def test_point_prompts_are_refused_as_boxes() -> None:
    with pytest.raises(ValueError, match="needs a point prompt"):
        seeded_region(two_discs(), FramePrompt(box=(0, 0, 10, 10)))


def test_only_the_parts_of_a_mask_that_touch_the_region_are_kept() -> None:
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = mask[6:9, 6:9] = True
    region = np.zeros((10, 10), bool)
    region[2, 2] = True
    kept = keep_seeded_parts(mask, region)
    assert kept[1:3, 1:3].all() and not kept[6:9, 6:9].any()
