"""What the test asks of OHIF's screen, computed from screenshots (PNG pixels) and the DICOM objects.

Each check returns a ``Check``: ``ok``, the reasons it failed (sentences), and the numbers it looked at.

SEG overlay (``check_seg_overlay``): two screenshots of the same slice, segments shown and hidden. Pixels that
changed between them are assigned to a segment when the change points from the grey underneath towards the
segment's colour (a blend of any opacity). They must lie inside the body (found in the hidden screenshot)
and where the SEG's own geometry puts each segment on the displayed slice: each frame's Image Position and
Orientation, mapped onto the page through the viewport's pixel-to-page transform. A SEG whose frames sit
off the volume has nothing on the slice, so whatever OHIF draws for it fails the check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from scipy import ndimage

VOLUME_CODE = ("118565006", "SCT")
TRACKING_IDENTIFIER = "112039"
TRACKING_UID = "112040"
REFERENCED_SEGMENT = "121191"


@dataclass
class Check:
    """The outcome of one check: ``ok`` when ``reasons`` is empty."""

    name: str
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def fail(self, reason: str) -> None:
        self.reasons.append(reason)

    def __str__(self) -> str:
        state = "ok" if self.ok else "FAILED: " + "; ".join(self.reasons)
        return f"{self.name}: {state} {self.metrics}"


# --- colours -------------------------------------------------------------------------------------------


def dicom_lab_to_rgb(value: Sequence[int]) -> tuple[int, int, int]:
    """sRGB of a DICOM CIELab triplet (Recommended Display CIELab Value, 0..65535 each, D65 white)."""
    lightness = value[0] / 65535 * 100
    a_star = value[1] / 65535 * 255 - 128
    b_star = value[2] / 65535 * 255 - 128
    fy = (lightness + 16) / 116
    fx, fz = fy + a_star / 500, fy - b_star / 200

    def inverse(t: float) -> float:
        return t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)

    xyz = np.array([0.95047 * inverse(fx), 1.0 * inverse(fy), 1.08883 * inverse(fz)])
    linear = (
        np.array(
            [
                [3.2404542, -1.5371385, -0.4985314],
                [-0.9692660, 1.8760108, 0.0415560],
                [0.0556434, -0.2040259, 1.0572252],
            ]
        )
        @ xyz
    )
    linear = np.clip(linear, 0, 1)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    r, g, b = (int(round(float(v) * 255)) for v in srgb)
    return r, g, b


def css_rgb(text: str | None) -> tuple[int, int, int] | None:
    """``(r, g, b)`` of a CSS ``rgb(...)`` / ``rgba(...)`` value."""
    match = re.match(r"rgba?\(\s*(\d+),\s*(\d+),\s*(\d+)", text or "")
    return tuple(int(v) for v in match.groups()) if match else None  # type: ignore[return-value]


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of (..., 3) float RGB."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) + 360) % 360


def _hue_distance(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    d = np.abs(np.asarray(a) - np.asarray(b)) % 360
    return np.minimum(d, 360 - d)


def chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1).astype(float) - rgb.min(axis=-1).astype(float)


# --- screenshots and the page ---------------------------------------------------------------------------


def load_rgb(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def canvas_box(viewport: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) page pixels of the viewport canvas, inset 2 px from its border."""
    canvas = viewport["canvas"]
    left, top = int(np.ceil(canvas["x"])) + 2, int(np.ceil(canvas["y"])) + 2
    right = int(np.floor(canvas["x"] + canvas["width"])) - 2
    bottom = int(np.floor(canvas["y"] + canvas["height"])) - 2
    return top, bottom, left, right


@dataclass(frozen=True)
class PageTransform:
    """Image coordinates (x = column, y = row; (0, 0) the top-left corner of the top-left pixel) to page
    pixels, from the driver's ``pixelToPage``: page = offset + matrix @ (x, y)."""

    offset: np.ndarray
    matrix: np.ndarray

    @classmethod
    def from_viewport(cls, viewport: Mapping[str, Any]) -> PageTransform:
        mapping = viewport["pixelToPage"]
        origin = np.array(mapping["origin"], float)
        column = np.array(mapping["column"], float) - origin
        row = np.array(mapping["row"], float) - origin
        return cls(origin, np.column_stack([column, row]))

    def image_coordinates(self, page_x: np.ndarray, page_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inverse = np.linalg.inv(self.matrix)
        dx, dy = page_x - self.offset[0], page_y - self.offset[1]
        return inverse[0, 0] * dx + inverse[0, 1] * dy, inverse[1, 0] * dx + inverse[1, 1] * dy


def body_mask(hidden: np.ndarray, margin: int = 12, opening_px: int = 5) -> np.ndarray:
    """The patient in a greyscale screenshot region (segments hidden): everything but the air around it.

    The air's grey level is read at the region's top and bottom rows (a viewer fits the image to the
    viewport, so those rows are image, and a patient image has air there); black padding beside the image
    counts as air too. Air is every pixel up to ``margin`` grey levels above that level that is connected to
    the region's border; the body is the largest part of the rest once parts thinner than about
    ``2 * opening_px`` pixels are cut (a table, a blanket, text), with what it encloses (lungs, a skull that a
    T1 window draws black).
    """
    grey = hidden.mean(axis=-1)
    edge_rows = np.concatenate([grey[:3].ravel(), grey[-3:].ravel()])
    lit = edge_rows[edge_rows > 4]
    air = float(np.median(lit)) if lit.size >= edge_rows.size / 2 else 0.0
    dark = grey <= air + margin
    labelled, _ = ndimage.label(dark)
    border = np.unique(np.concatenate([labelled[0], labelled[-1], labelled[:, 0], labelled[:, -1]]))
    outside = np.isin(labelled, border[border > 0])
    solid = ndimage.binary_opening(~outside, iterations=opening_px)
    rest, count = ndimage.label(solid)
    if count == 0:
        return np.zeros(grey.shape, bool)
    sizes = ndimage.sum_labels(solid, rest, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(rest == int(np.argmax(sizes)) + 1)


# --- SEG geometry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plane:
    """One image plane in patient coordinates (LPS, mm)."""

    position: np.ndarray  # centre of pixel (0, 0)
    row_direction: np.ndarray  # along a row: columns grow
    column_direction: np.ndarray  # down a column: rows grow
    spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @classmethod
    def of_image(cls, dataset: pydicom.Dataset) -> Plane:
        orientation = np.array(dataset.ImageOrientationPatient, float)
        return cls(
            np.array(dataset.ImagePositionPatient, float),
            orientation[:3],
            orientation[3:],
            (float(dataset.PixelSpacing[0]), float(dataset.PixelSpacing[1])),
            int(dataset.Rows),
            int(dataset.Columns),
        )


def seg_frames(seg: pydicom.Dataset) -> list[tuple[int, Plane, np.ndarray]]:
    """(segment number, plane, boolean mask) of every frame, from the SEG's functional groups."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    pixels = seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))
    frames = []
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):

        def functional(keyword: str, item: pydicom.Dataset = item) -> pydicom.Dataset:
            return (item.get(keyword) or shared.get(keyword))[0]

        orientation = np.array(functional("PlaneOrientationSequence").ImageOrientationPatient, float)
        spacing = functional("PixelMeasuresSequence").PixelSpacing
        plane = Plane(
            np.array(functional("PlanePositionSequence").ImagePositionPatient, float),
            orientation[:3],
            orientation[3:],
            (float(spacing[0]), float(spacing[1])),
            int(seg.Rows),
            int(seg.Columns),
        )
        number = int(functional("SegmentIdentificationSequence").ReferencedSegmentNumber)
        frames.append((number, plane, pixels[index] > 0))
    return frames


def expected_on_image(
    frames: Sequence[tuple[int, Plane, np.ndarray]], image: Plane, tolerance_mm: float
) -> dict[int, np.ndarray]:
    """Segment number -> mask on ``image``'s pixel grid, from the SEG frames whose plane is the image's plane
    (parallel, within ``tolerance_mm`` along the normal), resampled by patient position."""
    rows, columns = np.mgrid[0 : image.rows, 0 : image.columns]
    points = (
        image.position[None, None, :]
        + (columns[..., None] * image.spacing[1]) * image.row_direction
        + (rows[..., None] * image.spacing[0]) * image.column_direction
    )
    expected: dict[int, np.ndarray] = {}
    for number, plane, mask in frames:
        expected.setdefault(number, np.zeros((image.rows, image.columns), bool))
        if abs(abs(float(np.dot(plane.normal, image.normal))) - 1) > 1e-3:
            continue
        if abs(float(np.dot(plane.position - image.position, image.normal))) > tolerance_mm:
            continue
        if not mask.any():
            continue
        offset = points - plane.position
        column = np.rint(offset @ plane.row_direction / plane.spacing[1]).astype(int)
        row = np.rint(offset @ plane.column_direction / plane.spacing[0]).astype(int)
        inside = (column >= 0) & (column < plane.columns) & (row >= 0) & (row < plane.rows)
        hit = np.zeros_like(inside)
        hit[inside] = mask[row[inside], column[inside]]
        expected[number] |= hit
    return expected


def project_to_page(
    masks: Mapping[int, np.ndarray], transform: PageTransform, box: tuple[int, int, int, int]
) -> dict[int, np.ndarray]:
    """Image-grid masks drawn onto the page region ``box`` (nearest pixel)."""
    top, bottom, left, right = box
    page_y, page_x = np.mgrid[top:bottom, left:right].astype(float) + 0.5
    x, y = transform.image_coordinates(page_x, page_y)
    column, row = np.floor(x).astype(int), np.floor(y).astype(int)
    projected = {}
    for number, mask in masks.items():
        inside = (column >= 0) & (column < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
        drawn = np.zeros(page_x.shape, bool)
        drawn[inside] = mask[row[inside], column[inside]]
        projected[number] = drawn
    return projected


# --- the checks ----------------------------------------------------------------------------------------


def segment_colours(seg: pydicom.Dataset) -> dict[int, tuple[int, int, int]]:
    return {
        int(item.SegmentNumber): dicom_lab_to_rgb([int(v) for v in item.RecommendedDisplayCIELabValue])
        for item in seg.SegmentSequence
    }


def check_segmentation_panel(seg: pydicom.Dataset, loaded: Mapping[str, Any], tolerance: int = 6) -> Check:
    """OHIF's segmentation panel lists every segment of ``seg`` with its label and display colour."""
    check = Check("segmentation panel")
    rows = loaded["rows"]
    colours = segment_colours(seg)
    check.metrics["rows"] = [(row["number"], row["title"], row["color"]) for row in rows]
    if len(rows) != len(seg.SegmentSequence):
        check.fail(f"the panel lists {len(rows)} segments, the SEG holds {len(seg.SegmentSequence)}")
    by_title = {row["title"]: row for row in rows}
    for item in seg.SegmentSequence:
        label, number = str(item.SegmentLabel), int(item.SegmentNumber)
        row = by_title.get(label)
        if row is None:
            check.fail(f"segment {number} {label!r} is not in the panel (titles {sorted(by_title)})")
            continue
        shown = css_rgb(row["color"])
        if shown is None or max(abs(a - b) for a, b in zip(shown, colours[number], strict=True)) > tolerance:
            check.fail(
                f"segment {label!r} is drawn in {row['color']}, the SEG recommends rgb{colours[number]}"
            )
    return check


def _segment_changes(
    shown: np.ndarray, hidden: np.ndarray, colours: Mapping[int, tuple[int, int, int]], min_change: int = 12
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Per segment, the pixels whose change from ``hidden`` to ``shown`` points towards its colour; and the
    changed pixels no segment explains."""
    delta = shown.astype(float) - hidden.astype(float)
    changed = np.abs(delta).max(axis=-1) >= min_change
    delta_norm = np.linalg.norm(delta, axis=-1) + 1e-9
    best = np.full(changed.shape, -1.0)
    owner = np.zeros(changed.shape, int)
    for number, colour in colours.items():
        towards = np.array(colour, float)[None, None, :] - hidden.astype(float)
        cosine = (delta * towards).sum(axis=-1) / (delta_norm * (np.linalg.norm(towards, axis=-1) + 1e-9))
        better = cosine > best
        best[better], owner[better] = cosine[better], number
    assigned = changed & (best >= 0.9)
    return {n: assigned & (owner == n) for n in colours}, changed & ~assigned


def _segment_coloured(image: np.ndarray, colours: Mapping[int, tuple[int, int, int]]) -> np.ndarray:
    """Pixels that look like a segment colour: strongly chromatic with a segment's hue."""
    hue = _hue(image.astype(float))
    coloured = np.zeros(image.shape[:2], bool)
    for colour in colours.values():
        coloured |= _hue_distance(hue, float(_hue(np.array(colour, float)))) <= 20
    return coloured & (chroma(image) >= 40)


def check_seg_overlay(
    seg: pydicom.Dataset,
    image: pydicom.Dataset,
    viewport: Mapping[str, Any],
    shown_png: str | Path,
    hidden_png: str | Path,
    slice_tolerance_mm: float,
    name: str = "SEG overlay",
) -> Check:
    """OHIF draws ``seg`` on the displayed ``image`` where the SEG's geometry puts it, inside the body, in the
    segments' colours, and draws nothing of it when the segments are hidden."""
    check = Check(name)
    if viewport.get("sopInstanceUid") != str(image.SOPInstanceUID):
        check.fail(f"the viewport shows {viewport.get('sopInstanceUid')}, not image {image.SOPInstanceUID}")
        return check
    box = canvas_box(viewport)
    top, bottom, left, right = box
    shown = load_rgb(shown_png)[top:bottom, left:right]
    hidden = load_rgb(hidden_png)[top:bottom, left:right]
    colours = segment_colours(seg)
    drawn, unexplained = _segment_changes(shown, hidden, colours)
    transform = PageTransform.from_viewport(viewport)
    expected = project_to_page(
        expected_on_image(seg_frames(seg), Plane.of_image(image), slice_tolerance_mm), transform, box
    )
    body = body_mask(hidden)
    near_body = ndimage.binary_dilation(body, iterations=3)
    all_drawn = np.zeros(body.shape, bool)
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    for number, label in labels.items():
        wanted, got = expected.get(number, np.zeros(body.shape, bool)), drawn[number]
        all_drawn |= got
        wanted_count, got_count = int(wanted.sum()), int(got.sum())
        metrics: dict[str, Any] = {"expected_px": wanted_count, "drawn_px": got_count}
        if wanted_count >= 50:
            recall = float((wanted & ndimage.binary_dilation(got, iterations=2)).sum()) / wanted_count
            metrics["recall"] = round(recall, 3)
            if recall < 0.8:
                check.fail(f"{label!r}: only {recall:.0%} of where the SEG puts it on this slice is drawn")
        if got_count >= 50:
            precision = float((got & ndimage.binary_dilation(wanted, iterations=3)).sum()) / got_count
            metrics["precision"] = round(precision, 3)
            if precision < 0.9:
                check.fail(
                    f"{label!r}: {1 - precision:.0%} of its {got_count} drawn pixels lie where the SEG's "
                    "geometry has no mask on this slice"
                )
        if got_count:
            metrics["grey_under"] = round(float(np.median(hidden[got].mean(axis=-1))), 1)
        check.metrics[label] = metrics
    total = int(all_drawn.sum())
    check.metrics["grey_body"] = (
        round(float(np.median(hidden[body].mean(axis=-1))), 1) if body.any() else None
    )
    check.metrics["segment_px"] = total
    check.metrics["unexplained_changed_px"] = int(unexplained.sum())
    if total < 200:
        check.fail(f"no segment is drawn on this slice ({total} segment-coloured pixels changed)")
    else:
        inside = float((all_drawn & near_body).sum()) / total
        check.metrics["inside_body"] = round(inside, 4)
        if inside < 0.98:
            check.fail(f"{1 - inside:.1%} of the segment pixels lie outside the body")
        if unexplained.sum() > 0.05 * total:
            check.fail(f"{int(unexplained.sum())} changed pixels are in no segment's colour")
    coloured_shown = int(_segment_coloured(shown, colours).sum())
    coloured_hidden = int(_segment_coloured(hidden, colours).sum())
    check.metrics["segment_coloured_px"] = {"shown": coloured_shown, "hidden": coloured_hidden}
    if coloured_hidden > max(50, 0.01 * coloured_shown):
        check.fail(f"{coloured_hidden} pixels keep the segment colours with the segments hidden")
    return check


def sr_groups(sr: pydicom.Dataset) -> dict[str, dict[str, Any]]:
    """Tracking UID -> {identifier, volume (value, unit), referenced image of the 2D outline} of a TID 1500."""
    groups: dict[str, dict[str, Any]] = {}
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in container.ContentSequence:
            entry: dict[str, Any] = {}
            for child in group.get("ContentSequence", []):
                code = child.ConceptNameCodeSequence[0]
                if code.CodeValue == TRACKING_IDENTIFIER:
                    entry["identifier"] = str(child.TextValue)
                elif code.CodeValue == TRACKING_UID:
                    entry["uid"] = str(child.UID)
                elif (code.CodeValue, code.get("CodingSchemeDesignator")) == VOLUME_CODE:
                    measured = child.MeasuredValueSequence[0]
                    entry["volume"] = (
                        float(measured.NumericValue),
                        str(measured.MeasurementUnitsCodeSequence[0].CodeValue),
                    )
                elif child.ValueType == "SCOORD":
                    entry["image"] = str(
                        child.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    )
            merged = groups.setdefault(entry.get("uid", f"group-{len(groups)}"), {})
            merged.update(entry)
    return groups


def check_sr_display(sr: pydicom.Dataset, loaded: Mapping[str, Any]) -> Check:
    """OHIF loaded ``sr``, lists one measurement per tracked structure and shows each structure's volume with
    its unit on the image the 2D outline references."""
    check = Check("SR display")
    display_set = loaded["display_set"]
    groups = sr_groups(sr)
    drawable = {uid: g for uid, g in groups.items() if "image" in g}
    check.metrics["measurements"] = len(display_set["measurements"])
    check.metrics["shown"] = [(s["viewport"] or {}).get("sopInstanceUid") for s in loaded["shown"]]
    check.metrics["nudged"] = [s.get("nudged") for s in loaded["shown"]]
    if not display_set["isLoaded"]:
        check.fail("OHIF did not load the SR")
    if len(display_set["measurements"]) != len(drawable):
        check.fail(f"OHIF lists {len(display_set['measurements'])} measurements; the SR has {len(drawable)}")
    for measurement in display_set["measurements"]:
        if not measurement.get("TrackingIdentifier") or not measurement.get("TrackingUniqueIdentifier"):
            check.fail(f"a measurement lost its tracking identifier or UID: {measurement}")
    texts = [" ".join(s["texts"]) for s in loaded["shown"]]
    for uid, group in drawable.items():
        if "volume" not in group:
            continue
        value, unit = group["volume"]
        wanted = f"Volume: {value:.2f} {unit}"
        hits = [i for i, text in enumerate(texts) if wanted in text]
        check.metrics[group.get("identifier", uid)] = wanted
        if not hits:
            check.fail(f"{group.get('identifier')!r}: {wanted!r} is not shown (shown: {texts})")
            continue
        shown_on = (loaded["shown"][hits[0]]["viewport"] or {}).get("sopInstanceUid")
        if shown_on != group["image"]:
            check.fail(
                f"{group.get('identifier')!r} is shown on {shown_on}, its outline is on {group['image']}"
            )
    return check


def check_secondary_capture(
    sc: pydicom.Dataset, viewport: Mapping[str, Any], screenshot: str | Path
) -> Check:
    """OHIF shows the SC and its coloured overlay: the hues drawn in the SC's pixels are on the screen."""
    check = Check("Secondary Capture")
    if viewport.get("sopInstanceUid") != str(sc.SOPInstanceUID):
        check.fail(f"the viewport shows {viewport.get('sopInstanceUid')}, not the SC {sc.SOPInstanceUID}")
        return check
    top, bottom, left, right = canvas_box(viewport)
    screen = load_rgb(screenshot)[top:bottom, left:right]
    source = sc.pixel_array.astype(np.int16)
    if source.ndim == 2:
        check.fail("the SC has no colour overlay (it is greyscale)")
        return check

    def hue_histogram(pixels: np.ndarray) -> np.ndarray:
        selected = pixels[chroma(pixels) >= 60].astype(float)
        return np.bincount((_hue(selected) // 30).astype(int) % 12, minlength=12)

    expected, found = hue_histogram(source), hue_histogram(screen)
    scale = screen.shape[0] * screen.shape[1] / (source.shape[0] * source.shape[1])
    check.metrics["overlay_px"] = {"sc": int(expected.sum()), "screen": int(found.sum())}
    significant = [b for b in range(12) if expected[b] >= 0.05 * expected.sum()]
    if not significant:
        check.fail("the SC has no coloured overlay pixels")
    for bin_ in significant:
        ratio = found[bin_] / max(1.0, expected[bin_] * min(scale, 1.0))
        check.metrics[f"hue_{bin_ * 30}"] = round(float(ratio), 2)
        if ratio < 0.3:
            check.fail(f"overlay colours of hue {bin_ * 30}-{bin_ * 30 + 30} deg are missing on screen")
    return check


def check_no_browser_errors(events: Sequence[Mapping[str, Any]]) -> Check:
    check = Check("browser errors")
    check.metrics["count"] = len(events)
    for event in events:
        detail = event.get("text") or event.get("url")
        check.fail(f"{event['kind']} during {event.get('during')}: {str(detail)[:300]}")
    return check
