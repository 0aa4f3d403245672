"""Every output kind of every tool on real data: encode, write, read back, dciodvfy with 0 errors, and the
identity every object must carry (same study, new series with its configured number, deterministic UIDs,
Contributing Equipment "Processing Algorithm", the node's and the tool's names and versions).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_node.encode import OutputKind, SegmentationType, encode_results
from dicom_node.encode.common import source_instances
from tests.unit.dicom_node.conftest import all_uids, dciodvfy_output, write_and_read
from tools.base import Box, ToolResult, ToolStatus

LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
#: dicom3tools 2022 predates Label Map Segmentation Storage (Sup 243, 2024): it knows no IOD for it and
#: reads the label map's background segment (number 0) as a numbering error, and in the SR that references
#: it, takes the segment numbers for references to a non-segmentation. Nothing else may be reported.
DCIODVFY_2022_LABEL_MAP_ERRORS = {
    "Error - Shall not be present for Referenced SOP Class that is not segmentation - attribute "
    "<ReferencedSegmentNumber>",
    "Error - Information Object Not found",
    "Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence item number 1 "
    "(from one) with SegmentNumber of 0",
}
SERIES_NUMBERS = {OutputKind.SEG: 9001, OutputKind.SR: 9002, OutputKind.SC: 9003}
SOP_CLASSES = {
    OutputKind.SEG: (pydicom.uid.SegmentationStorage, LABEL_MAP_SEGMENTATION_STORAGE),
    OutputKind.SR: (pydicom.uid.Comprehensive3DSRStorage,),
    OutputKind.SC: (pydicom.uid.SecondaryCaptureImageStorage,),
}


def _box_around(mask: np.ndarray, label: str, score: float) -> Box:
    frame = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    rows, columns = np.nonzero(mask[frame])
    return Box(
        label=label,
        frame=frame,
        xyxy=(float(columns.min()), float(rows.min()), float(columns.max()), float(rows.max())),
        score=score,
        rows=mask.shape[1],
        columns=mask.shape[2],
    )


def _cases(request) -> dict:
    chest_ct = request.getfixturevalue("chest_ct")
    lung_masks = request.getfixturevalue("lung_masks")
    brain_mr = request.getfixturevalue("brain_mr")
    head_mask = request.getfixturevalue("head_mask")
    chest_cr = request.getfixturevalue("chest_cr")
    cr_lung_mask = request.getfixturevalue("cr_lung_mask")
    us_rgb = request.getfixturevalue("us_rgb")
    lymph_node_mask = request.getfixturevalue("lymph_node_mask")
    us_palette = request.getfixturevalue("us_palette")
    sector_mask = request.getfixturevalue("sector_mask")
    enhanced_ct = request.getfixturevalue("enhanced_ct")
    return {
        "enhanced ct multi-frame": (
            enhanced_ct,
            ToolResult(status=ToolStatus.OK, masks={"body": enhanced_ct.array > -500}),
            {},
        ),
        "ct segmentation": (chest_ct, ToolResult(status=ToolStatus.OK, masks=lung_masks), {}),
        "ct boxes": (
            chest_ct,
            ToolResult(
                status=ToolStatus.OK,
                boxes=[_box_around(m, label, 0.9) for label, m in lung_masks.items()],
            ),
            {},
        ),
        "mr segmentation": (brain_mr, ToolResult(status=ToolStatus.OK, masks={"head": head_mask}), {}),
        "cr segmentation and boxes": (
            chest_cr,
            ToolResult(
                status=ToolStatus.OK,
                masks={"lung": cr_lung_mask},
                boxes=[_box_around(cr_lung_mask, "lung", 0.75)],
            ),
            {},
        ),
        "cr classification": (
            chest_cr,
            ToolResult(
                status=ToolStatus.OK, labels={"chest X-ray": 0.91, "abdomen CT": 0.02, "brain MRI": 0.07}
            ),
            {},
        ),
        "cr report": (
            chest_cr,
            ToolResult(
                status=ToolStatus.OK,
                text="Findings: Both lungs are clear. No effusion.\nImpression: No acute disease.",
            ),
            {},
        ),
        "us rgb segmentation": (
            us_rgb,
            ToolResult(status=ToolStatus.OK, masks={"lymph node": lymph_node_mask}),
            {},
        ),
        "us palette fractional": (
            us_palette,
            ToolResult(status=ToolStatus.OK, masks={"tissue": sector_mask.astype(np.float32) * 0.8}),
            {},
        ),
        "us palette vqa": (
            us_palette,
            ToolResult(status=ToolStatus.OK, text="An obstetric ultrasound sector."),
            {"question": "What does this image show?"},
        ),
        "mr retrieval": (
            brain_mr,
            ToolResult(
                status=ToolStatus.OK,
                text="T1-weighted images show fat bright and fluid dark.",
                sources=[{"title": "MRI basics", "section": "Contrast", "url": "https://example.org/mri"}],
            ),
            {"question": "Why is fat bright on T1?"},
        ),
        "ct labelmap": (
            chest_ct,
            ToolResult(status=ToolStatus.OK, masks=lung_masks),
            {"segmentation_type": SegmentationType.LABELMAP},
        ),
    }


CASES = [
    "enhanced ct multi-frame",
    "ct segmentation",
    "ct boxes",
    "mr segmentation",
    "cr segmentation and boxes",
    "cr classification",
    "cr report",
    "us rgb segmentation",
    "us palette fractional",
    "us palette vqa",
    "mr retrieval",
    "ct labelmap",
]


@pytest.mark.parametrize("case", CASES)
def test_every_object_round_trips_and_passes_dciodvfy(
    case, request, encoding_context, tmp_path, dciodvfy
) -> None:
    volume, result, options = _cases(request)[case]
    objects = encode_results(volume, result, "Test engine", "2.1", encoding_context, **options)
    kinds = [o.kind for o in objects]
    expected = [OutputKind.SEG] if result.masks else []
    expected += [OutputKind.SR]
    expected += [OutputKind.SC] if result.masks or result.boxes else []
    assert kinds == expected
    source = volume.datasets[0]
    for encoded in objects:
        path = tmp_path / f"{encoded.kind.value}.dcm"
        dataset = write_and_read(encoded.dataset, path)
        errors = dciodvfy(path)
        if options.get("segmentation_type") is SegmentationType.LABELMAP:
            errors = [e for e in errors if e not in DCIODVFY_2022_LABEL_MAP_ERRORS]
        assert errors == [], dciodvfy_output(path)
        assert dataset.SOPClassUID in SOP_CLASSES[encoded.kind]
        assert dataset.StudyInstanceUID == source.StudyInstanceUID
        assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
        assert dataset.SeriesNumber == SERIES_NUMBERS[encoded.kind]
        assert dataset.PatientID == source.get("PatientID", "")
        assert (dataset.Manufacturer, dataset.ManufacturerModelName) == ("MedAgent", "MedAgent Node")
        assert dataset.SoftwareVersions
        equipment = [
            item
            for item in dataset.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        ]
        assert len(equipment) == 1
        item = equipment[0]
        assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
        assert item.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
        assert (item.Manufacturer, item.ManufacturerModelName) == ("MedAgent", "MedAgent Node")
        assert "Test engine 2.1" in list(item.SoftwareVersions)
    again = encode_results(volume, result, "Test engine", "2.1", encoding_context, **options)
    assert [all_uids(o.dataset) for o in again] == [all_uids(o.dataset) for o in objects]
    other = encode_results(volume, result, "Test engine", "2.2", encoding_context, **options)
    assert {o.dataset.SOPInstanceUID for o in other}.isdisjoint({o.dataset.SOPInstanceUID for o in objects})
    if OutputKind.SR in kinds:
        sr = objects[kinds.index(OutputKind.SR)].dataset
        listed = {
            str(instance.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence
        }
        expected_evidence = {str(d.SOPInstanceUID) for d in source_instances(volume)}
        if OutputKind.SEG in kinds and any(np.any(m) for m in result.masks.values()):
            expected_evidence.add(str(objects[0].dataset.SOPInstanceUID))
        assert listed == expected_evidence
        assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
