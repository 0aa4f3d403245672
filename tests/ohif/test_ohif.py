"""Issue 10: every object the node sends opens in OHIF Viewer 3.13.2, the viewer radiologists use.

The chest CT round trip of issue 2 (Orthanc with DICOMweb is the PACS; the node sends SEG, SR and SC back),
then OHIF in headless chromium, opened as a user would: study list, the study's row, "Basic Viewer"; the CT;
double-click the SEG and answer "Yes"; the segmentation panel; each segment's row (OHIF jumps to the slice
through its centre) with the segments shown and hidden; double-click the SR and step through its
measurements; double-click the SC. Screenshots go to ``var/test-artifacts/ohif/<test>/``; browser console,
network errors and timings to the test log.

MR and CR: the node's tools produce nothing for them today (the rules planner answers an empty plan), so
the MR check uses a SEG and an SR built here with the node's own encoders over a threshold mask.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from scipy import ndimage

from tests.helpers.peers import shared_data
from tests.helpers.round_trip import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE, SEG, RoundTrip
from tests.ohif import checks
from tests.ohif.browser import OhifBrowser
from tests.ohif.conftest import OhifPeer

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


@dataclass
class Study:
    """A study in Orthanc as the test knows it: its image series' headers and the result objects."""

    row_text: str  # what identifies the study's row in OHIF's study list (the MRN column)
    study_instance_uid: str
    images: dict[str, pydicom.Dataset]  # SOP Instance UID -> header of the source image series
    results: dict[str, pydicom.Dataset]  # SOP Class UID -> result object

    @property
    def series(self) -> pydicom.Dataset:
        return next(iter(self.images.values()))

    @property
    def half_slice_distance(self) -> float:
        normal = np.cross(*np.reshape(np.array(self.series.ImageOrientationPatient, float), (2, 3)))
        positions = sorted(float(np.dot(normal, d.ImagePositionPatient)) for d in self.images.values())
        return float(np.min(np.diff(positions))) / 2


def _headers(paths: list[Path]) -> dict[str, pydicom.Dataset]:
    headers = (pydicom.dcmread(path, stop_before_pixels=True) for path in paths)
    return {str(header.SOPInstanceUID): header for header in headers}


@pytest.fixture(scope="module")
def chest_ct(ohif_peer: OhifPeer, chest_ct_round_trip: RoundTrip) -> Study:
    """Issue 2's round trip (run once per session, tests/helpers/round_trip.py), as OHIF will show it."""
    trip = chest_ct_round_trip
    assert trip.orthanc is ohif_peer.orthanc
    results = {}
    for sop_class in (SEG, COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE):
        assert len(trip.found[sop_class]) == 1, (
            f"expected one {sop_class}, Orthanc holds {trip.found[sop_class]}"
        )
        results[sop_class] = pydicom.dcmread(trip.results[sop_class])
    first = pydicom.dcmread(trip.ct_files[0], stop_before_pixels=True)
    return Study(str(first.PatientID), trip.study_instance_uid, _headers(trip.ct_files), results)


# --- what a radiologist does, and what the test reads off the screen -------------------------------------


def open_and_check_seg(
    browser: OhifBrowser,
    study: Study,
    seg: pydicom.Dataset,
    name: str,
    open_study: bool = True,
    segments: int | None = None,
) -> list[checks.Check]:
    """(Study list -> viewer;) double-click the SEG, "Yes"; then each segment's row (the first ``segments``):
    screenshots with the segments shown and hidden, checked against the SEG's geometry. Returns the panel's
    Check, then one Check per segment row."""
    if open_study:
        browser.command("open_study", row_text=study.row_text, study_instance_uid=study.study_instance_uid)
    loaded = browser.command("load_seg", series_number=int(seg.SeriesNumber), name=name)
    found = [checks.check_segmentation_panel(seg, loaded)]
    for item in list(seg.SegmentSequence)[:segments]:
        label = str(item.SegmentLabel)
        stem = f"{name}-{re.sub(r'[^A-Za-z0-9]+', '-', label)}"
        shown = browser.command("select_segment", title=label, name=f"{stem}-shown")
        hidden = browser.command("toggle_segments", name=f"{stem}-hidden")
        browser.command("toggle_segments")
        image = study.images.get(shown["viewport"]["sopInstanceUid"])
        if image is None:
            check = checks.Check(f"{name} {label}")
            check.fail(f"OHIF shows {shown['viewport']['sopInstanceUid']}, not an image of the source series")
        else:
            check = checks.check_seg_overlay(
                seg,
                image,
                shown["viewport"],
                shown["screenshot"],
                hidden["screenshot"],
                study.half_slice_distance,
                name=f"{name} {label} (slice {shown['viewport']['imageIndex'] + 1})",
            )
        found.append(check)
    return found


def open_and_read_sr(browser: OhifBrowser, study: Study, sr: pydicom.Dataset, name: str) -> dict:
    """Study list -> viewer; double-click the SR; step with the viewport's arrow to each measurement that
    carries a volume. Returns OHIF's display set and what was shown (for ``checks.check_sr_display``)."""
    browser.command("open_study", row_text=study.row_text, study_instance_uid=study.study_instance_uid)
    loaded = browser.command(
        "load_sr",
        series_number=int(sr.SeriesNumber),
        series_instance_uid=str(sr.SeriesInstanceUID),
        name=f"{name}-1",
    )
    order = [m["TrackingUniqueIdentifier"] for m in loaded["display_set"]["measurements"]]
    wanted = sorted(
        order.index(uid) for uid, g in checks.sr_groups(sr).items() if "volume" in g and uid in order
    )
    shown, position = [loaded["shown"]], 0
    for index in wanted:
        if index > position:
            step = browser.command("sr_next", count=index - position, name=f"{name}-{index + 1}")
            shown.append(step["shown"])
            position = index
    if any(s["nudged"] for s in shown):
        logger.warning("OHIF drew the SR's annotations only after the viewport was scrolled away and back")
    if loaded["tracking_prompt"]:
        logger.info("OHIF offers to track the SR's measurements (display set rehydratable); left unanswered")
    return {"display_set": loaded["display_set"], "shown": shown}


def _log(found: list[checks.Check], artifacts: Path) -> None:
    for check in found:
        logger.log(logging.INFO if check.ok else logging.ERROR, "%s", check)
    (artifacts / "checks.txt").write_text("\n".join(str(check) for check in found) + "\n")


def _assert_all_ok(found: list[checks.Check], browser: OhifBrowser) -> None:
    found = [*found, checks.check_no_browser_errors(browser.errors())]
    _log(found, browser.artifacts)
    logger.info("OHIF command timings (ms): %s", browser.timings)
    failed = [str(check) for check in found if not check.ok]
    assert not failed, "\n".join(failed)


# --- the tests ------------------------------------------------------------------------------------------


def test_chest_ct_seg_sr_and_sc_open_in_ohif(chest_ct: Study, browser: OhifBrowser) -> None:
    started = time.monotonic()
    seg = chest_ct.results[SEG]
    sr = chest_ct.results[COMPREHENSIVE_3D_SR]
    sc = chest_ct.results[SECONDARY_CAPTURE]
    found: list[checks.Check] = []

    opened = browser.command(
        "open_study", row_text=chest_ct.row_text, study_instance_uid=chest_ct.study_instance_uid
    )
    logger.info("study browser: %s", opened["study_browser"])
    ct = browser.command(
        "show_series",
        series_number=int(chest_ct.series.SeriesNumber),
        series_instance_uid=str(chest_ct.series.SeriesInstanceUID),
        name="ct",
    )
    rendered = checks.Check("CT renders")
    if ct["viewport"]["sopInstanceUid"] not in chest_ct.images:
        rendered.fail(f"the viewport shows {ct['viewport']['sopInstanceUid']}, not a CT slice")
    else:
        top, bottom, left, right = checks.canvas_box(ct["viewport"])
        canvas = checks.load_rgb(ct["screenshot"])[top:bottom, left:right]
        body = checks.body_mask(canvas)
        rendered.metrics["body_fraction"] = round(float(body.mean()), 3)
        if body.mean() < 0.1:
            rendered.fail("no patient is drawn in the viewport")
    found.append(rendered)

    sc_shown = browser.command(
        "show_series",
        series_number=int(sc.SeriesNumber),
        series_instance_uid=str(sc.SeriesInstanceUID),
        name="sc",
    )
    found.append(checks.check_secondary_capture(sc, sc_shown["viewport"], sc_shown["screenshot"]))

    seg_checks = open_and_check_seg(browser, chest_ct, seg, "seg", open_study=False)
    found += seg_checks
    # The lungs are the dark, air-filled part of the chest: what each lung segment covers is darker (with
    # the segments hidden) than the body around it.
    over_lungs = checks.Check("segments over the lungs")
    for check in seg_checks[1:]:
        for item in seg.SegmentSequence:
            label = str(item.SegmentLabel)
            under, body = check.metrics.get(label, {}).get("grey_under"), check.metrics.get("grey_body")
            over_lungs.metrics[f"{check.name}: {label}"] = (under, body)
            if under is None or body is None or under >= 0.8 * body:
                over_lungs.fail(f"{check.name}: {label!r} covers grey {under}, the body's median is {body}")
    found.append(over_lungs)

    sr_loaded = open_and_read_sr(browser, chest_ct, sr, "sr")
    found.append(checks.check_sr_display(sr, sr_loaded))
    logger.info("SR in OHIF: %s", sr_loaded["display_set"]["measurements"][:4])

    logger.info("OHIF part took %.0f s", time.monotonic() - started)
    _assert_all_ok(found, browser)


def test_a_seg_moved_off_the_volume_fails_the_check(
    chest_ct: Study, ohif_peer: OhifPeer, browser: OhifBrowser, tmp_path: Path
) -> None:
    """Negative control: the node's SEG with every frame moved 5 m along the slice normal. OHIF 3.13.2 still
    draws it over the lungs (it places frames by their referenced CT image), but the SEG's geometry puts
    nothing on any CT slice, so the overlay check must fail."""
    moved = copy.deepcopy(chest_ct.results[SEG])
    moved.SOPInstanceUID = moved.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    moved.SeriesInstanceUID = generate_uid()
    moved.SeriesNumber = 9901
    moved.SeriesDescription = "Negative control: frames moved off the volume"
    normal = np.cross(*np.reshape(np.array(chest_ct.series.ImageOrientationPatient, float), (2, 3)))
    for item in moved.PerFrameFunctionalGroupsSequence:
        position = item.PlanePositionSequence[0]
        position.ImagePositionPatient = [
            f"{v:.6f}" for v in np.array(position.ImagePositionPatient, float) + 5000 * normal
        ]
    ohif_peer.orthanc.upload(_write(moved, tmp_path / "moved.dcm"))

    found = open_and_check_seg(browser, chest_ct, moved, "moved-seg", segments=1)
    _log(found, browser.artifacts)
    overlays = found[1:]
    assert overlays and all(not check.ok for check in overlays), [str(c) for c in overlays]
    assert all("geometry has no mask" in " ".join(check.reasons) for check in overlays)


def _write(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def brain_mr(ohif_peer: OhifPeer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The brain MR with a SEG and an SR made by the node's encoders over an intensity-threshold head mask."""
    from dicom_node.encode import EncodingContext, encode_seg, encode_sr
    from dicom_node.load import load_volume, read_series

    files = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))
    volume = load_volume(read_series(files))
    head = volume.array > 0.1 * np.percentile(volume.array, 99)  # visible tissue, not the noise around it
    head = np.stack([ndimage.binary_fill_holes(ndimage.binary_opening(s, iterations=2)) for s in head])
    labelled, count = ndimage.label(head)
    head = labelled == 1 + int(np.argmax(ndimage.sum_labels(head, labelled, range(1, count + 1))))
    context = EncodingContext(
        uid_prefix="1.2.826.0.1.3680043.8.498.",
        series_number_base=9000,
        institution_name="Test",
        node_ae_title="MEDAGENT",
    )
    seg = encode_seg(volume, {"head": head}, "Intensity threshold (test)", "1", context)
    sr = encode_sr(volume, seg, {"head": head}, "Intensity threshold (test)", "1", context)
    folder = tmp_path_factory.mktemp("mr")
    for path in files:
        ohif_peer.orthanc.upload(path)
    for dataset, name in ((seg, "seg.dcm"), (sr, "sr.dcm")):
        ohif_peer.orthanc.upload(_write(dataset, folder / name))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Study(
        str(first.PatientID),
        str(first.StudyInstanceUID),
        _headers(files),
        {SEG: seg, COMPREHENSIVE_3D_SR: sr},
    )


def test_threshold_seg_and_sr_over_the_brain_mr_open_in_ohif(brain_mr: Study, browser: OhifBrowser) -> None:
    found = open_and_check_seg(browser, brain_mr, brain_mr.results[SEG], "mr-seg")
    sr = brain_mr.results[COMPREHENSIVE_3D_SR]
    found.append(checks.check_sr_display(sr, open_and_read_sr(browser, brain_mr, sr, "mr-sr")))
    _assert_all_ok(found, browser)
