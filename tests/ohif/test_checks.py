"""The screen checks of test_ohif.py on made-up screenshots: each can fail, and fails for the right reason."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from tests.ohif import checks

RED, GREEN = (230, 25, 75), (60, 180, 75)


@pytest.mark.parametrize("rgb", [RED, GREEN, (0, 130, 200), (255, 225, 25)])
def test_dicom_lab_colours_convert_back_to_the_rgb_highdicom_encoded(rgb: tuple[int, int, int]) -> None:
    encoded = hd.color.CIELabColor.from_rgb(*rgb).value
    assert max(abs(a - b) for a, b in zip(checks.dicom_lab_to_rgb(encoded), rgb, strict=True)) <= 2


def _screen(air: int = 57) -> np.ndarray:
    """A 200x200 'CT in a lung window': air around a body (disk, grey 180) holding a dark lung (grey 76)."""
    y, x = np.mgrid[0:200, 0:200]
    grey = np.full((200, 200), air, np.int16)
    grey[(y - 100) ** 2 + (x - 100) ** 2 < 80**2] = 180
    grey[(y - 100) ** 2 + (x - 120) ** 2 < 30**2] = 76
    return np.repeat(grey[..., None], 3, axis=2)


def test_the_body_includes_the_dark_lungs_it_encloses_and_not_the_air_around_it() -> None:
    body = checks.body_mask(_screen())
    assert body[100, 120] and body[100, 100]
    assert not body[5, 5] and not body[100, 195]
    assert abs(int(body.sum()) - int(np.pi * 80**2)) < 0.05 * np.pi * 80**2


def _seg(label: str = "left lung", colour: tuple[int, int, int] = RED) -> Dataset:
    """Enough of a SEG for the checks: one segment, one frame on the plane of ``_image``."""
    seg = Dataset()
    item = Dataset()
    item.SegmentNumber, item.SegmentLabel = 1, label
    item.RecommendedDisplayCIELabValue = list(hd.color.CIELabColor.from_rgb(*colour).value)
    seg.SegmentSequence = [item]
    return seg


def _image(sop_instance_uid: str = "1.2.3.4") -> Dataset:
    image = Dataset()
    image.SOPInstanceUID = sop_instance_uid
    image.ImagePositionPatient = [0, 0, 0]
    image.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    image.PixelSpacing = [1, 1]
    image.Rows = image.Columns = 200
    return image


def _viewport(sop_instance_uid: str = "1.2.3.4") -> dict:
    """The screenshot is the canvas at (0, 0), one image pixel per page pixel."""
    return {
        "sopInstanceUid": sop_instance_uid,
        "imageIndex": 0,
        "canvas": {"x": 0, "y": 0, "width": 200, "height": 200},
        "pixelToPage": {"origin": [0, 0], "column": [1, 0], "row": [0, 1]},
    }


def _overlay(screen: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    shown = screen.copy()
    shown[mask] = (0.5 * screen[mask] + 0.5 * np.array(colour)).astype(np.int16)
    return shown


def _write(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _lung() -> np.ndarray:
    y, x = np.mgrid[0:200, 0:200]
    return (y - 100) ** 2 + (x - 120) ** 2 < 30**2


def _check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    drawn: np.ndarray,
    frame_mask: np.ndarray,
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    hidden: np.ndarray | None = None,
) -> checks.Check:
    """``drawn`` blended in red over ``_screen()``; the SEG's one frame holds ``frame_mask`` at ``position``."""
    plane = checks.Plane(
        np.array(position), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (1.0, 1.0), 200, 200
    )
    monkeypatch.setattr(checks, "seg_frames", lambda _seg: [(1, plane, frame_mask)])
    screen = _screen()
    shown = _write(_overlay(screen, drawn, RED), tmp_path / "shown.png")
    hidden_png = _write(screen if hidden is None else hidden, tmp_path / "hidden.png")
    return checks.check_seg_overlay(_seg(), _image(), _viewport(), shown, hidden_png, 2.5)


def test_an_overlay_where_the_seg_puts_it_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _check(tmp_path, monkeypatch, _lung(), _lung())
    assert result.ok, result


def test_an_overlay_where_the_seg_has_nothing_on_this_slice_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _check(tmp_path, monkeypatch, _lung(), _lung(), position=(0.0, 0.0, 5000.0))
    assert not result.ok and "geometry has no mask" in " ".join(result.reasons)


def test_a_seg_that_is_not_drawn_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _check(tmp_path, monkeypatch, np.zeros((200, 200), bool), _lung())
    assert not result.ok and "no segment is drawn" in " ".join(result.reasons)


def test_an_overlay_outside_the_body_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = np.zeros((200, 200), bool)
    outside[2:20, 2:60] = True
    result = _check(tmp_path, monkeypatch, outside, outside)
    assert not result.ok and "outside the body" in " ".join(result.reasons)


def test_segment_colours_left_on_screen_when_hidden_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _check(tmp_path, monkeypatch, _lung(), _lung(), hidden=_overlay(_screen(), _lung(), RED))
    assert not result.ok and "segments hidden" in " ".join(result.reasons)


def test_the_panel_check_fails_on_a_missing_name_or_a_wrong_colour() -> None:
    seg = _seg()
    ok = checks.check_segmentation_panel(
        seg, {"rows": [{"number": "1", "title": "left lung", "color": "rgb(230, 25, 75)"}]}
    )
    renamed = checks.check_segmentation_panel(
        seg, {"rows": [{"number": "1", "title": "Segment 1", "color": "rgb(230, 25, 75)"}]}
    )
    recoloured = checks.check_segmentation_panel(
        seg, {"rows": [{"number": "1", "title": "left lung", "color": "rgb(0, 130, 200)"}]}
    )
    assert ok.ok and not renamed.ok and not recoloured.ok


def test_any_console_error_fails() -> None:
    assert checks.check_no_browser_errors([]).ok
    assert not checks.check_no_browser_errors(
        [{"kind": "console", "type": "error", "text": "boom", "during": "load_sr"}]
    ).ok


def test_a_measurement_report_missing_from_the_screen_fails() -> None:
    sr = pydicom.Dataset()
    group = Dataset()
    tracking, uid, volume = Dataset(), Dataset(), Dataset()
    tracking.ValueType, tracking.TextValue = "TEXT", "left lung"
    tracking.ConceptNameCodeSequence = [Dataset()]
    tracking.ConceptNameCodeSequence[0].CodeValue = "112039"
    uid.ValueType, uid.UID = "UIDREF", "1.2.3"
    uid.ConceptNameCodeSequence = [Dataset()]
    uid.ConceptNameCodeSequence[0].CodeValue = "112040"
    volume.ValueType = "NUM"
    volume.ConceptNameCodeSequence = [Dataset()]
    volume.ConceptNameCodeSequence[0].CodeValue, volume.ConceptNameCodeSequence[0].CodingSchemeDesignator = (
        "118565006",
        "SCT",
    )
    measured = Dataset()
    measured.NumericValue = "1928.421"
    measured.MeasurementUnitsCodeSequence = [Dataset()]
    measured.MeasurementUnitsCodeSequence[0].CodeValue = "ml"
    volume.MeasuredValueSequence = [measured]
    outline = Dataset()
    outline.ValueType = "SCOORD"
    outline.ConceptNameCodeSequence = [Dataset()]
    outline.ConceptNameCodeSequence[0].CodeValue = "111030"
    reference = Dataset()
    reference.ReferencedSOPSequence = [Dataset()]
    reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    outline.ContentSequence = [reference]
    group.ContentSequence = [tracking, uid, volume, outline]
    container = Dataset()
    container.ConceptNameCodeSequence = [Dataset()]
    container.ConceptNameCodeSequence[0].CodeValue = "126010"
    container.ContentSequence = [group]
    sr.ContentSequence = [container]
    display_set = {
        "isLoaded": True,
        "measurements": [{"TrackingIdentifier": "left lung", "TrackingUniqueIdentifier": "1.2.3"}],
    }
    shown = {"texts": ["Volume: 1928.42 mlArea: 11678.50 mm2"], "viewport": {"sopInstanceUid": "1.2.3.4"}}
    assert checks.check_sr_display(sr, {"display_set": display_set, "shown": [shown]}).ok
    elsewhere = {**shown, "viewport": {"sopInstanceUid": "9.9"}}
    assert not checks.check_sr_display(sr, {"display_set": display_set, "shown": [elsewhere]}).ok
    unitless = {**shown, "texts": ["Volume: 1928.42"]}
    assert not checks.check_sr_display(sr, {"display_set": display_set, "shown": [unitless]}).ok
