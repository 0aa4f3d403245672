"""The node's SEG and SR as the OHIF viewer's libraries read them (DESIGN.md 3.5 and 7).

``seg_labelmap.mjs`` loads a SEG over its source images with ``@cornerstonejs/adapters`` 5.6.8 (the SEG
loader OHIF 3.13.2 pins; it parses with ``dcmjs``) and writes the labelmap it builds per source image: it
must equal our mask voxel for voxel, which proves the per-frame source references and positions (OHIF's
own display places frames by position only). ``sr_groups.mjs`` parses each SR with ``dcmjs`` and lists its
measurement groups and qualitative evaluations as OHIF's SR extension finds them; ``dcmjs``'s own
``MeasurementReport.generateToolState`` must not throw on them.

Node.js runs the scripts; ``npm ci`` installs the pinned packages (``make setup`` does it; so does this
module when ``tests/viewer/node_modules`` is missing). Skipped only where ``node`` is not on the PATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.encode import SegmentationType, encode_measurement_report, encode_seg
from tests.helpers.peers import shared_data
from tools.base import Box, ToolResult, ToolStatus

VIEWER = Path(__file__).resolve().parent
# a box on the whole-slide image's loaded level (1110 x 1483), across four of its 500 x 500 tiles
SLIDE_BOX = Box(label="tumour", frame=0, xyxy=(400, 450, 699, 799), score=0.75, rows=1483, columns=1110)
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None, reason="Node.js ('node') is not on the PATH; the viewer checks need it"
)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The pinned npm packages, installed with ``npm ci`` if ``make setup`` has not done it."""
    folder = VIEWER / "node_modules"
    if not (folder / "@cornerstonejs" / "adapters").exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install tests/viewer's packages (npm ci)"
        completed = subprocess.run(
            [npm, "ci", "--prefix", str(VIEWER), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
    return folder


def _node(script: str, *arguments: str) -> str:
    completed = subprocess.run(
        [NODE, str(VIEWER / script), *arguments], capture_output=True, text=True, timeout=300, cwd=VIEWER
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout


def _labelmaps(seg: pydicom.Dataset, sources: list[Path], tmp_path: Path) -> list[dict[str, np.ndarray]]:
    """The labelmap layers OHIF's SEG loader builds, per source SOP Instance UID."""
    seg_path = tmp_path / "seg.dcm"
    pydicom.dcmwrite(seg_path, seg, enforce_file_format=True)
    out = tmp_path / "labelmap.json"
    _node("seg_labelmap.mjs", str(out), str(seg_path), *map(str, sources))
    document = json.loads(out.read_text())
    rows, columns = int(seg.Rows), int(seg.Columns)
    return [
        {
            uid: np.repeat([v for v, _ in runs], [n for _, n in runs]).reshape(rows, columns)
            for uid, runs in layer.items()
        }
        for layer in document["labelmaps"]
    ]


def _expected(volume, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per source instance, the segment number of each pixel (segments in sorted label order)."""
    expected = {}
    for index, dataset in enumerate(volume.datasets):
        labels = np.zeros(masks[next(iter(masks))].shape[1:], np.int64)
        for number, label in enumerate(sorted(masks), start=1):
            labels[masks[label][index]] = number
        expected[str(dataset.SOPInstanceUID)] = labels
    return expected


@pytest.mark.parametrize("segmentation_type", [SegmentationType.BINARY, SegmentationType.LABELMAP])
def test_ohif_builds_our_ct_lung_masks_from_the_seg(
    node_modules, chest_ct, lung_masks, encoding_context, tmp_path, segmentation_type
) -> None:
    seg = encode_seg(
        chest_ct,
        lung_masks,
        "CT Hounsfield anatomy",
        "1.0",
        encoding_context,
        segmentation_type=segmentation_type,
    )
    sources = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))
    layers = _labelmaps(seg, sources, tmp_path)
    assert len(layers) == 1  # the lungs do not overlap: one labelmap
    expected = _expected(chest_ct, lung_masks)
    assert set(layers[0]) == set(expected)
    for uid, labels in expected.items():
        np.testing.assert_array_equal(layers[0][uid], labels, err_msg=f"slice {uid}")


def test_ohif_builds_our_sagittal_mr_mask_from_the_seg(
    node_modules, brain_mr, head_mask, encoding_context, tmp_path
) -> None:
    seg = encode_seg(brain_mr, {"head": head_mask}, "MR threshold", "1", encoding_context)
    sources = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))
    layers = _labelmaps(seg, sources, tmp_path)
    expected = _expected(brain_mr, {"head": head_mask})
    assert len(layers) == 1 and set(layers[0]) == set(expected)
    for uid, labels in expected.items():
        np.testing.assert_array_equal(layers[0][uid], labels, err_msg=f"slice {uid}")


@pytest.fixture(scope="module")
def sr_summaries(
    node_modules, chest_ct, lung_masks, brain_mr, whole_slide, encoding_context, tmp_path_factory
) -> dict[str, dict]:
    """Every kind of SR the node writes, as dcmjs reads it."""
    folder = tmp_path_factory.mktemp("sr")
    seg = encode_seg(chest_ct, lung_masks, "CT Hounsfield anatomy", "1.0", encoding_context)
    key = int(np.argmax(lung_masks["left lung"].sum(axis=(1, 2))))
    boxes = [
        Box(label="nodule", frame=key, xyxy=(40, 60, 120, 140), score=0.8125, rows=512, columns=512),
        Box(label="nodule", frame=key + 2, xyxy=(300, 200, 330, 260), score=0.5, rows=512, columns=512),
    ]
    ok = ToolStatus.OK
    reports = {
        "segmentation": (chest_ct, ToolResult(status=ok, masks=lung_masks), {"seg": seg}),
        "boxes": (chest_ct, ToolResult(status=ok, boxes=boxes), {}),
        "classification": (chest_ct, ToolResult(status=ok, labels={"chest CT": 0.93, "brain MRI": 0.07}), {}),
        "report": (
            chest_ct,
            ToolResult(status=ok, text="Findings: Emphysema in both upper lobes.\nImpression: COPD."),
            {},
        ),
        "retrieval": (
            brain_mr,
            ToolResult(
                status=ok,
                text="Fat has a short T1.",
                sources=[{"title": "Merck Manual", "section": "MRI", "url": "https://example.org/mri"}],
            ),
            {"question": "Why is fat bright on T1?"},
        ),
        "vqa": (brain_mr, ToolResult(status=ok, text="A sagittal T1 image."), {"question": "What is shown?"}),
        "slide": (
            whole_slide,
            ToolResult(
                status=ok, labels={"adenocarcinoma": 0.8}, boxes=[SLIDE_BOX], text="Glands in stroma."
            ),
            {},
        ),
    }
    paths = []
    for name, (volume, result, options) in reports.items():
        dataset = encode_measurement_report(volume, result, "Engine", "1", encoding_context, **options)
        paths.append(folder / f"{name}.dcm")
        pydicom.dcmwrite(paths[-1], dataset, enforce_file_format=True)
    summaries = json.loads(_node("sr_groups.mjs", *map(str, paths)))
    return {
        "seg": seg,
        "chest_ct": chest_ct,
        "whole_slide": whole_slide,
        **dict(zip(reports, summaries, strict=True)),
    }


def _evaluations(summary: dict) -> list[tuple[str, str]]:
    return [
        (item["concept"]["meaning"], item.get("text") or item["value"]["meaning"])
        for item in summary["evaluations"]
    ]


@pytest.mark.parametrize(
    "name", ["segmentation", "boxes", "classification", "report", "retrieval", "vqa", "slide"]
)
def test_dcmjs_reads_every_sr_as_an_ai_measurement_report(sr_summaries, name) -> None:
    summary = sr_summaries[name]
    assert summary["template"] == "1500"
    assert (summary["completion"], summary["verification"]) == ("PARTIAL", "UNVERIFIED")
    assert summary["toolStateError"] is None
    assert all(merged["drawable"] for merged in summary["merged"].values())  # OHIF 3.13.2 can draw every one


def test_dcmjs_finds_the_segmentation_groups_paired_and_pointing_at_the_seg(sr_summaries, lung_masks) -> None:
    summary, seg = sr_summaries["segmentation"], sr_summaries["seg"]
    merged = summary["merged"]
    assert sorted(m["trackingIdentifiers"][0] for m in merged.values()) == ["left lung", "right lung"]
    for entry in merged.values():
        assert entry["trackingIdentifiers"] == [entry["trackingIdentifiers"][0]] * 2
        assert entry["numbers"]["Volume"]["unit"] == "ml" and entry["numbers"]["Area"]["unit"] == "mm2"
    for group in summary["groups"]:
        segments = [image for image in group["images"] if image["concept"] == "Referenced Segment"]
        if segments:
            assert segments[0]["sopInstanceUID"] == seg.SOPInstanceUID
            number = segments[0]["segments"][0]
            assert seg.SegmentSequence[number - 1].SegmentLabel == group["trackingIdentifier"]
            expected_ml = np.count_nonzero(lung_masks[group["trackingIdentifier"]]) * 5.0 * 0.78125**2 / 1000
            assert group["numbers"]["Volume"]["value"] == pytest.approx(expected_ml, abs=0.001)
        else:
            assert group["scoords"][0]["graphicType"] == "POLYLINE"
            points = group["scoords"][0]["points"]
            assert points[:2] == points[-2:]  # closed


def test_dcmjs_finds_each_box_as_a_closed_rectangle_on_its_slice(sr_summaries) -> None:
    volume = sr_summaries["chest_ct"]
    groups = sr_summaries["boxes"]["groups"]
    assert [g["trackingIdentifier"] for g in groups] == ["nodule", "nodule"]
    assert len({g["trackingUID"] for g in groups}) == 2
    rectangles = {g["scoords"][0]["sopInstanceUID"]: g for g in groups}
    key = next(i for i, d in enumerate(volume.datasets) if d.SOPInstanceUID in rectangles)
    first = rectangles[volume.datasets[key].SOPInstanceUID]
    assert first["scoords"][0]["points"] == [40, 60, 121, 60, 121, 141, 40, 141, 40, 60]
    assert first["numbers"]["Probability"]["value"] == 0.8125
    assert rectangles[volume.datasets[key + 2].SOPInstanceUID]["numbers"]["Probability"]["value"] == 0.5


def test_dcmjs_finds_classification_report_and_answers(sr_summaries) -> None:
    classification = sr_summaries["classification"]
    volume = sr_summaries["chest_ct"]
    middle = volume.datasets[len(volume.datasets) // 2]
    for name, identifier in [
        ("classification", "AI classification: chest CT"),
        ("report", "AI report"),
        ("vqa", "AI answer"),
    ]:
        (anchor,) = sr_summaries[name]["groups"]  # the whole key image, so that viewers find a group to draw
        assert anchor["trackingIdentifier"] == identifier
        if name != "vqa":
            assert anchor["scoords"][0]["sopInstanceUID"] == middle.SOPInstanceUID
            assert anchor["scoords"][0]["points"] == [0, 0, 512, 0, 512, 512, 0, 512, 0, 0]
    assert classification["groups"][0]["numbers"]["Probability"]["value"] == 0.93
    assert _evaluations(classification) == [("Finding", "chest CT"), ("Finding", "brain MRI")]
    assert [item["properties"][0]["value"] for item in classification["evaluations"]] == [0.93, 0.07]
    assert _evaluations(sr_summaries["report"]) == [
        ("Finding", "Emphysema in both upper lobes."),
        ("Impression", "COPD."),
    ]
    assert _evaluations(sr_summaries["retrieval"]) == [
        ("Question", "Why is fat bright on T1?"),
        ("Answer", "Fat has a short T1."),
        ("Citation", "[1] Merck Manual; MRI; https://example.org/mri"),
    ]
    assert _evaluations(sr_summaries["vqa"]) == [
        ("Question", "What is shown?"),
        ("Answer", "A sagittal T1 image."),
    ]


def test_dcmjs_finds_the_slide_box_on_the_total_pixel_matrix_of_the_loaded_level(sr_summaries) -> None:
    level = sr_summaries["whole_slide"].datasets[0]
    (group,) = sr_summaries["slide"]["groups"]
    (scoord,) = group["scoords"]
    assert (scoord["sopInstanceUID"], scoord["frames"]) == (level.SOPInstanceUID, [])
    assert scoord["points"] == [400, 450, 700, 450, 700, 800, 400, 800, 400, 450]
    assert group["numbers"]["Probability"]["value"] == 0.75
    assert group["numbers"]["Area"]["unit"] == "mm2"
    assert _evaluations(sr_summaries["slide"]) == [
        ("Finding", "adenocarcinoma"),
        ("Finding", "Glands in stroma."),
    ]
