"""SR encoder (TID 1500): volumes and areas, references to the SEG and the source, outlines, dciodvfy."""

from __future__ import annotations

import dataclasses
import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file
from scipy import ndimage

from dicom_node.encode import OutputKind, encode_results
from dicom_node.encode.codes import FINDING
from dicom_node.encode.seg import encode_seg
from dicom_node.encode.sr import encode_measurement_report, encode_sr, key_slice, outline, report_sections
from dicom_node.errors import EncodeError
from dicom_node.load import load_volume
from tests.unit.dicom_node.conftest import ALGORITHM_NAME, ALGORITHM_VERSION, all_uids, dciodvfy_output
from tools.base import Box, ToolResult, ToolStatus

ROW_SPACING = COLUMN_SPACING = 0.78125
SLICE_DISTANCE = 5.0  # the slices are 1 mm thick but 5 mm apart


@pytest.fixture(scope="module")
def seg_dataset(chest_ct, lung_masks, encoding_context):
    return encode_seg(chest_ct, lung_masks, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context)


@pytest.fixture(scope="module")
def sr_file(chest_ct, lung_masks, encoding_context, seg_dataset, tmp_path_factory):
    dataset = encode_sr(
        chest_ct, seg_dataset, lung_masks, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context
    )
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def sr(sr_file):
    return hd.sr.srread(sr_file)


def _measurement(group, meaning):
    found = [m for m in group.get_measurements() if m.name.meaning == meaning]
    assert len(found) == 1, [m.name.meaning for m in group.get_measurements()]
    return found[0]


def test_sr_is_a_partial_unverified_measurement_report_in_the_study(sr, chest_ct) -> None:
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert sr.StudyInstanceUID == chest_ct.study_instance_uid
    assert sr.SeriesInstanceUID != chest_ct.series_instance_uid
    assert sr.SeriesNumber == 9002
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in sr.ContributingEquipmentSequence]
    assert "Newcode1" in purposes


def test_sr_names_the_node_as_device_observer_and_the_ct_chest_as_procedure(sr) -> None:
    root = sr.ContentSequence
    by_meaning = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in root}
    assert by_meaning["Observer Type"].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert by_meaning["Device Observer Name"].TextValue == "MEDAGENT"
    assert by_meaning["Device Observer Manufacturer"].TextValue == "MedAgent"
    procedure = by_meaning["Procedure reported"].ConceptCodeSequence[0]
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator) == ("24627-2", "LN")


def test_sr_volumes_use_the_slice_distance_and_reference_the_seg_segments(
    sr, lung_masks, seg_dataset
) -> None:
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["left lung", "right lung"]
    for segment_number, group in enumerate(groups, start=1):
        mask = lung_masks[group.tracking_identifier]
        volume = _measurement(group, "Volume")
        assert volume.unit.value == "ml"
        expected = np.count_nonzero(mask) * SLICE_DISTANCE * ROW_SPACING * COLUMN_SPACING / 1000.0
        assert volume.value == pytest.approx(expected, abs=0.0006)
        attenuation = _measurement(group, "Attenuation Coefficient")
        assert attenuation.unit.value == "[hnsf'U]"
        assert -1000 < attenuation.value < -400
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg_dataset.SOPInstanceUID
        assert reference.referenced_sop_class_uid == pydicom.uid.SegmentationStorage
        assert reference.referenced_segment_numbers == [segment_number]
        assert group.finding_type.value == ("44029006" if segment_number == 1 else "3341006")


def test_sr_planar_groups_pair_with_the_volumetric_ones_and_outline_the_key_slice(
    sr, chest_ct, lung_masks
) -> None:
    volumetric = {
        g.tracking_identifier: g.tracking_uid for g in sr.content.get_volumetric_roi_measurement_groups()
    }
    planar = sr.content.get_planar_roi_measurement_groups()
    assert {g.tracking_identifier: g.tracking_uid for g in planar} == volumetric
    assert len(set(volumetric.values())) == 2
    for group in planar:
        mask = lung_masks[group.tracking_identifier]
        index = key_slice(mask)
        region = group.roi
        assert region.GraphicType == "POLYLINE"
        points = region.value
        assert 4 <= len(points) <= 200
        np.testing.assert_array_equal(points[0], points[-1])
        assert np.all(points >= 0) and np.all(points[:, 0] <= 512) and np.all(points[:, 1] <= 512)
        referenced = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert referenced == chest_ct.datasets[index].SOPInstanceUID
        area = _measurement(group, "Area")
        assert area.unit.value == "mm2"
        expected_area = np.count_nonzero(mask[index]) * ROW_SPACING * COLUMN_SPACING
        assert area.value == pytest.approx(expected_area, abs=0.06)
        # the outline, filled, covers the largest part of the structure on that slice
        labelled, count = ndimage.label(mask[index], structure=np.ones((3, 3)))
        sizes = ndimage.sum_labels(mask[index], labelled, range(1, count + 1))
        largest = labelled == 1 + int(np.argmax(sizes))
        canvas = Image.new("1", (512, 512))
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in points - 0.5], fill=1, outline=1)
        filled = np.asarray(canvas, dtype=bool)
        overlap = np.count_nonzero(filled & largest) / np.count_nonzero(filled | largest)
        assert overlap > 0.9


def test_sr_evidence_lists_every_source_slice_and_the_seg(sr, chest_ct, seg_dataset) -> None:
    listed = {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    expected = {str(d.SOPInstanceUID) for d in chest_ct.datasets} | {str(seg_dataset.SOPInstanceUID)}
    assert listed == expected


def test_sr_is_deterministic(chest_ct, lung_masks, encoding_context, seg_dataset, sr) -> None:
    again = encode_sr(chest_ct, seg_dataset, lung_masks, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context)
    assert all_uids(again) == all_uids(sr)


def test_sr_of_a_single_slice_skips_groups_of_empty_structures(encoding_context, tmp_path, dciodvfy) -> None:
    volume = load_volume([pydicom.dcmread(get_testdata_file("CT_small.dcm"))])
    masks = {"body": volume.array > -500, "nodule": np.zeros(volume.array.shape, bool)}
    seg = encode_seg(volume, masks, "threshold", "1", encoding_context)
    dataset = encode_sr(volume, seg, masks, "threshold", "1", encoding_context)
    path = tmp_path / "sr.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    report = hd.sr.srread(path).content
    assert [g.tracking_identifier for g in report.get_volumetric_roi_measurement_groups()] == ["body"]
    assert [g.tracking_identifier for g in report.get_planar_roi_measurement_groups()] == ["body"]
    volume_ml = _measurement(report.get_volumetric_roi_measurement_groups()[0], "Volume").value
    assert volume_ml == pytest.approx(np.count_nonzero(masks["body"]) * volume.voxel_volume_ml, abs=0.0006)
    assert dciodvfy(path) == [], dciodvfy_output(path)


def test_sr_passes_dciodvfy(sr_file, dciodvfy) -> None:
    errors = dciodvfy(sr_file)
    assert errors == [], dciodvfy_output(sr_file)


def test_outline_of_small_shapes_is_closed() -> None:
    rectangle = np.zeros((10, 10), bool)
    rectangle[2:6, 3:8] = True
    points = outline(rectangle)
    np.testing.assert_array_equal(points, [[3.5, 2.5], [7.5, 2.5], [7.5, 5.5], [3.5, 5.5], [3.5, 2.5]])
    pixel = np.zeros((10, 10), bool)
    pixel[4, 4] = True
    np.testing.assert_array_equal(outline(pixel), [[4, 4], [5, 4], [5, 5], [4, 5], [4, 4]])
    disc = np.hypot(*np.mgrid[-300:300, -300:300]) < 280
    points = outline(disc)
    assert len(points) <= 200 and np.array_equal(points[0], points[-1])
    with pytest.raises(ValueError, match="empty"):
        outline(np.zeros((4, 4), bool))


def _items(dataset, meaning):
    """Content items anywhere in the tree whose concept name is ``meaning``."""
    found = []
    for item in dataset.get("ContentSequence", []):
        if "ConceptNameCodeSequence" in item and item.ConceptNameCodeSequence[0].CodeMeaning == meaning:
            found.append(item)
        found += _items(item, meaning)
    return found


def _groups(dataset):
    return _items(dataset, "Measurement Group")


def _every_group_has_a_2d_scoord(dataset) -> bool:
    """The rule OHIF 3.13.2 needs (DESIGN.md 7): a 2D SCOORD in every measurement group."""
    return all(
        any(item.ValueType == "SCOORD" for item in group.ContentSequence) for group in _groups(dataset)
    )


def _write_read(dataset, tmp_path, name="sr.dcm"):
    path = tmp_path / name
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def _group_values(group):
    values = {}
    for item in group.ContentSequence:
        if item.ValueType == "TEXT":
            values[item.ConceptNameCodeSequence[0].CodeMeaning] = item.TextValue
        elif item.ValueType == "NUM":
            values[item.ConceptNameCodeSequence[0].CodeMeaning] = float(
                item.MeasuredValueSequence[0].NumericValue
            )
    return values


def test_boxes_become_closed_polyline_rectangles_one_group_per_box(
    chest_ct, lung_masks, encoding_context, tmp_path, dciodvfy
) -> None:
    index = key_slice(lung_masks["left lung"])
    boxes = [
        Box(label="nodule", frame=index, xyxy=(40, 60, 120, 140), score=0.8125, rows=512, columns=512),
        Box(label="nodule", frame=index + 1, xyxy=(300, 200, 330, 260), score=0.5, rows=512, columns=512),
        Box(label="mass", frame=index, xyxy=(10, 10, 19, 29), score=0.25, rows=512, columns=512),
    ]
    result = ToolResult(status=ToolStatus.OK, boxes=boxes)
    path, sr = _write_read(
        encode_measurement_report(chest_ct, result, "Grounding", "1", encoding_context), tmp_path
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    groups = _groups(sr)
    assert len(groups) == 3 and _every_group_has_a_2d_scoord(sr)
    by_box = {}
    for group in groups:
        scoord = next(item for item in group.ContentSequence if item.ValueType == "SCOORD")
        points = np.array(scoord.GraphicData, dtype=float).reshape(-1, 2)
        referenced = scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        by_box[(referenced, tuple(points.min(axis=0)))] = (scoord, points, _group_values(group))
    uids = set()
    for box in boxes:
        x0, y0, x1, y1 = box.xyxy
        scoord, points, values = by_box[(chest_ct.datasets[box.frame].SOPInstanceUID, (x0, y0))]
        assert scoord.GraphicType == "POLYLINE"
        np.testing.assert_array_equal(
            points, [[x0, y0], [x1 + 1, y0], [x1 + 1, y1 + 1], [x0, y1 + 1], [x0, y0]]
        )
        assert values["Tracking Identifier"] == box.label
        assert values["Probability"] == pytest.approx(box.score)
        assert values["Area"] == pytest.approx(
            (x1 - x0 + 1) * (y1 - y0 + 1) * ROW_SPACING * COLUMN_SPACING, abs=0.06
        )
        uids.add(values["Tracking Identifier"])
    tracking_uids = {
        item.UID for group in groups for item in group.ContentSequence if item.ValueType == "UIDREF"
    }
    assert len(tracking_uids) == 3
    with pytest.raises(EncodeError, match="frame 99"):
        bad = ToolResult(status=ToolStatus.OK, boxes=[dataclasses.replace(boxes[0], frame=99)])
        encode_measurement_report(chest_ct, bad, "Grounding", "1", encoding_context)


def test_classification_becomes_qualitative_evaluations_with_probabilities(
    chest_cr, encoding_context, tmp_path, dciodvfy
) -> None:
    labels = {"chest X-ray": 0.91, "brain MRI": 0.07, "lung": 0.02}
    result = ToolResult(status=ToolStatus.OK, labels=labels)
    path, sr = _write_read(
        encode_measurement_report(chest_cr, result, "BiomedCLIP", "1", encoding_context), tmp_path
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    (anchor,) = _groups(sr)  # the whole image, so that viewers that need a group find one to draw
    scoord = next(item for item in anchor.ContentSequence if item.ValueType == "SCOORD")
    assert [float(v) for v in scoord.GraphicData] == [0, 0, 1841, 0, 1841, 1955, 0, 1955, 0, 0]
    values = _group_values(anchor)
    assert (values["Tracking Identifier"], values["Probability"]) == ("AI classification: chest X-ray", 0.91)
    container = _items(sr, "Qualitative Evaluations")
    assert len(container) == 1
    findings = container[0].ContentSequence
    assert [f.ConceptNameCodeSequence[0].CodeMeaning for f in findings] == ["Finding"] * 3
    values = [f.ConceptCodeSequence[0] for f in findings]
    assert [v.CodeMeaning for v in values] == ["chest X-ray", "brain MRI", "Lung"]
    assert values[0].CodingSchemeDesignator == "99MEDAGENT" and values[2].CodingSchemeDesignator == "SCT"
    probabilities = [float(f.ContentSequence[0].MeasuredValueSequence[0].NumericValue) for f in findings]
    assert probabilities == [0.91, 0.07, 0.02]
    assert {f.ContentSequence[0].RelationshipType for f in findings} == {"HAS PROPERTIES"}
    scheme = sr.CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == "99MEDAGENT"


def test_report_text_becomes_finding_and_impression(chest_cr, encoding_context, tmp_path, dciodvfy) -> None:
    text = (
        "Heart size normal.\nFINDINGS: Both lungs are clear.\nNo effusion.\n\nImpression: No acute disease."
    )
    result = ToolResult(status=ToolStatus.OK, text=text)
    path, sr = _write_read(
        encode_measurement_report(chest_cr, result, "ChatCAD", "1", encoding_context), tmp_path
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    items = _items(sr, "Qualitative Evaluations")[0].ContentSequence
    assert [(i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue) for i in items] == [
        ("Finding", "Heart size normal."),
        ("Finding", "Both lungs are clear.\nNo effusion."),
        ("Impression", "No acute disease."),
    ]
    assert report_sections("plain words") == [(FINDING, "plain words")]
    assert report_sections("  ") == []


def test_retrieval_and_vqa_answers_carry_question_and_citations(
    brain_mr, encoding_context, tmp_path, dciodvfy
) -> None:
    sources = [
        {
            "title": "Merck Manual",
            "section": "MRI",
            "url": "https://example.org/mri",
            "passage": "Fat is bright.",
        },
        {"title": "Radiology basics"},
    ]
    retrieval = ToolResult(status=ToolStatus.OK, text="Fat has a short T1.", sources=sources)
    path, sr = _write_read(
        encode_measurement_report(
            brain_mr, retrieval, "ChatCAD+", "1", encoding_context, question="Why is fat bright?"
        ),
        tmp_path,
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    items = _items(sr, "Qualitative Evaluations")[0].ContentSequence
    assert [(i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue) for i in items] == [
        ("Question", "Why is fat bright?"),
        ("Answer", "Fat has a short T1."),
        ("Citation", '[1] Merck Manual; MRI; https://example.org/mri; "Fat is bright."'),
        ("Citation", "[2] Radiology basics"),
    ]
    vqa = ToolResult(status=ToolStatus.OK, text="A sagittal T1 image of the head.")
    dataset = encode_measurement_report(
        brain_mr, vqa, "LLaVA-Med", "1", encoding_context, question="What is shown?"
    )
    path, sr = _write_read(dataset, tmp_path, "vqa.dcm")
    assert dciodvfy(path) == [], dciodvfy_output(path)
    items = _items(sr, "Qualitative Evaluations")[0].ContentSequence
    assert [i.ConceptNameCodeSequence[0].CodeMeaning for i in items] == ["Question", "Answer"]
    other = encode_measurement_report(
        brain_mr, vqa, "LLaVA-Med", "1", encoding_context, question="Which plane?"
    )
    assert other.SOPInstanceUID != dataset.SOPInstanceUID
    with pytest.raises(EncodeError, match="nothing to report"):
        encode_measurement_report(brain_mr, ToolResult(status=ToolStatus.OK), "x", "1", encoding_context)


def test_sr_of_a_2d_segmentation_pairs_a_segmentation_frame_with_an_outline(
    chest_cr, cr_lung_mask, encoding_context, tmp_path, dciodvfy
) -> None:
    masks = {"lung": cr_lung_mask}
    seg = encode_seg(chest_cr, masks, "threshold", "1", encoding_context)
    result = ToolResult(status=ToolStatus.OK, masks=masks)
    path, sr = _write_read(
        encode_measurement_report(chest_cr, result, "threshold", "1", encoding_context, seg=seg), tmp_path
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    groups = _groups(sr)
    assert len(groups) == 2
    assert [any(i.ValueType == "SCOORD" for i in g.ContentSequence) for g in groups] == [False, True]
    frame_reference = _items(groups[0], "Referenced Segmentation Frame")[0].ReferencedSOPSequence[0]
    assert frame_reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert int(frame_reference.ReferencedFrameNumber) == 1
    identifiers = [_group_values(g)["Tracking Identifier"] for g in groups]
    assert identifiers == ["lung", "lung"]
    tracking_uids = {item.UID for g in groups for item in g.ContentSequence if item.ValueType == "UIDREF"}
    assert len(tracking_uids) == 1
    assert "Area" not in _group_values(groups[1])  # the CR's Pixel Spacing is 0.000: no area in mm2


def _every_tracking_uid_has_a_2d_scoord(dataset) -> bool:
    """OHIF merges groups sharing a Tracking UID and draws the merged group from its 2D SCOORD."""
    with_scoord, all_uids_ = set(), set()
    for group in _groups(dataset):
        uid = next(item.UID for item in group.ContentSequence if item.ValueType == "UIDREF")
        all_uids_.add(uid)
        if any(item.ValueType == "SCOORD" for item in group.ContentSequence):
            with_scoord.add(uid)
    return bool(all_uids_) and with_scoord == all_uids_


def test_segmentation_srs_keep_the_ohif_pairing(sr_file, chest_cr, cr_lung_mask, encoding_context) -> None:
    assert _every_tracking_uid_has_a_2d_scoord(pydicom.dcmread(sr_file))
    seg = encode_seg(chest_cr, {"lung": cr_lung_mask}, "threshold", "1", encoding_context)
    planar = encode_sr(chest_cr, seg, {"lung": cr_lung_mask}, "threshold", "1", encoding_context)
    assert _every_tracking_uid_has_a_2d_scoord(planar)


SLIDE_SPACING = 0.000998  # mm, the loaded level's Pixel Spacing (shared Pixel Measures)


def _scoords(dataset):
    """Every SCOORD of every measurement group, with its group."""
    return [
        (group, item)
        for group in _groups(dataset)
        for item in group.ContentSequence
        if item.ValueType == "SCOORD"
    ]


def _assert_on_the_level(scoord, level) -> np.ndarray:
    """The SCOORD's points, after checking that they lie in the level's Total Pixel Matrix and that it
    references the level as a whole (no frame number, Pixel Origin Interpretation VOLUME)."""
    reference = scoord.ContentSequence[0].ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == level.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == level.SOPClassUID
    assert "ReferencedFrameNumber" not in reference
    assert scoord.PixelOriginInterpretation == "VOLUME"
    points = np.array(scoord.GraphicData, dtype=float).reshape(-1, 2)
    columns, rows = int(level.TotalPixelMatrixColumns), int(level.TotalPixelMatrixRows)
    assert np.all(points >= 0) and np.all(points[:, 0] <= columns) and np.all(points[:, 1] <= rows)
    np.testing.assert_array_equal(points[0], points[-1])
    return points


def _evidence_uids(dataset) -> set[str]:
    return {
        str(instance.ReferencedSOPInstanceUID)
        for study in dataset.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }


def test_sr_over_the_whole_slide_image_reports_labels_boxes_and_text_on_its_total_pixel_matrix(
    whole_slide, encoding_context, tmp_path, dciodvfy
) -> None:
    level = whole_slide.datasets[0]
    rows, columns = whole_slide.array.shape[1:3]
    assert (rows, columns) == (int(level.TotalPixelMatrixRows), int(level.TotalPixelMatrixColumns))
    boxes = [
        Box(label="tumour", frame=0, xyxy=(600, 700, 899, 1099), score=0.75, rows=rows, columns=columns),
        # the bottom right corner, past the tiles' edge: the level's 3 x 3 tiles of 500 cover 1500 x 1500
        Box(
            label="tumour",
            frame=0,
            xyxy=(1000, 1400, columns - 1, rows - 1),
            score=0.5,
            rows=rows,
            columns=columns,
        ),
    ]
    result = ToolResult(
        status=ToolStatus.OK,
        labels={"adenocarcinoma": 0.8, "normal tissue": 0.2},
        boxes=boxes,
        text="Findings: Glands in the stroma.\nImpression: Adenocarcinoma.",
    )
    path, sr = _write_read(
        encode_measurement_report(whole_slide, result, "PathCLIP", "1", encoding_context), tmp_path
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    assert _evidence_uids(sr) == {str(level.SOPInstanceUID)}
    scoords = _scoords(sr)
    assert len(scoords) == 2 and len(_groups(sr)) == 2
    for box, (group, scoord) in zip(boxes, sorted(scoords, key=lambda gs: gs[1].GraphicData[0]), strict=True):
        x0, y0, x1, y1 = box.xyxy
        points = _assert_on_the_level(scoord, level)
        np.testing.assert_array_equal(
            points, [[x0, y0], [x1 + 1, y0], [x1 + 1, y1 + 1], [x0, y1 + 1], [x0, y0]]
        )
        values = _group_values(group)
        assert (values["Tracking Identifier"], values["Probability"]) == ("tumour", box.score)
        expected_area = (x1 - x0 + 1) * (y1 - y0 + 1) * SLIDE_SPACING**2
        assert values["Area"] == pytest.approx(expected_area, rel=1e-5)  # about 0.12 mm2, not rounded to 0.1
    evaluations = _items(sr, "Qualitative Evaluations")[0].ContentSequence
    assert [
        (
            item.ConceptNameCodeSequence[0].CodeMeaning,
            item.get("TextValue") or item.ConceptCodeSequence[0].CodeMeaning,
        )
        for item in evaluations
    ] == [
        ("Finding", "adenocarcinoma"),
        ("Finding", "normal tissue"),
        ("Finding", "Glands in the stroma."),
        ("Impression", "Adenocarcinoma."),
    ]
    library = _items(sr, "Image Library Group")
    assert [
        item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in library
    ] == [level.SOPInstanceUID]
    report = hd.sr.srread(path).content
    assert [g.tracking_identifier for g in report.get_planar_roi_measurement_groups()] == ["tumour", "tumour"]


def test_sr_of_a_slide_classification_outlines_the_whole_total_pixel_matrix(
    whole_slide, encoding_context, tmp_path, dciodvfy
) -> None:
    result = ToolResult(status=ToolStatus.OK, labels={"adenocarcinoma": 0.8, "normal tissue": 0.2})
    path, sr = _write_read(
        encode_measurement_report(whole_slide, result, "PathCLIP", "1", encoding_context), tmp_path
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    ((group, scoord),) = _scoords(sr)
    points = _assert_on_the_level(scoord, whole_slide.datasets[0])
    np.testing.assert_array_equal(points, [[0, 0], [1110, 0], [1110, 1483], [0, 1483], [0, 0]])
    assert _group_values(group)["Tracking Identifier"] == "AI classification: adenocarcinoma"


def test_sr_over_a_slide_without_seg_outlines_the_masks_without_a_segment_reference(
    whole_slide, tissue_mask, encoding_context, tmp_path, dciodvfy, caplog
) -> None:
    """The shared slide lacks the slide geometry a SEG needs: its SR carries the outline and area alone."""
    result = ToolResult(status=ToolStatus.OK, masks={"tissue": tissue_mask})
    with caplog.at_level(logging.INFO, logger="dicom_node.encode"):
        objects = encode_results(whole_slide, result, "threshold", "1", encoding_context)
    assert [o.kind for o in objects] == [OutputKind.SR, OutputKind.SC]
    messages = [r.getMessage() for r in caplog.records]
    assert any("no SEG of the whole-slide image" in m for m in messages), messages
    assert any("reference no segment" in m for m in messages), messages
    path, sr = _write_read(objects[0].dataset, tmp_path)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    ((group, scoord),) = _scoords(sr)
    assert not _items(sr, "Referenced Segmentation Frame") and not _items(sr, "Referenced Segment")
    points = _assert_on_the_level(scoord, whole_slide.datasets[0])
    canvas = Image.new("1", (1110, 1483))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points - 0.5], fill=1, outline=1)
    filled = np.asarray(canvas, dtype=bool)
    assert np.count_nonzero(filled & tissue_mask[0]) / np.count_nonzero(filled | tissue_mask[0]) > 0.9
    values = _group_values(group)
    assert values["Tracking Identifier"] == "tissue"
    assert values["Area"] == pytest.approx(np.count_nonzero(tissue_mask) * SLIDE_SPACING**2, rel=1e-5)
    assert _evidence_uids(sr) == {str(whole_slide.datasets[0].SOPInstanceUID)}
    with pytest.raises(EncodeError, match="'seg' value None"):
        encode_measurement_report(
            load_volume([pydicom.dcmread(get_testdata_file("CT_small.dcm"))]),
            ToolResult(status=ToolStatus.OK, masks={"body": np.ones((1, 128, 128), bool)}),
            "threshold",
            "1",
            encoding_context,
        )


def test_sr_over_a_completed_slide_references_every_tile_of_the_segment_in_its_seg(
    completed_slide, tissue_mask, encoding_context, tmp_path, dciodvfy
) -> None:
    level = completed_slide.datasets[0]
    result = ToolResult(status=ToolStatus.OK, masks={"tissue": tissue_mask})
    seg, sr_dataset, _ = (
        o.dataset for o in encode_results(completed_slide, result, "threshold", "1", encoding_context)
    )
    assert seg.Modality == "SEG" and sr_dataset.Modality == "SR"
    path, sr = _write_read(sr_dataset, tmp_path)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    segment_group, outline_group = _groups(sr)
    frames = _items(segment_group, "Referenced Segmentation Frame")[0].ReferencedSOPSequence[0]
    assert frames.ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert "ReferencedSegmentNumber" not in frames  # the frames name the segment
    element = frames["ReferencedFrameNumber"]
    numbers = [int(v) for v in (element.value if element.VM > 1 else [element.value])]
    assert numbers == list(range(1, int(seg.NumberOfFrames) + 1))  # every tile of its one segment
    source = _items(segment_group, "Source Image for Segmentation")[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == level.SOPInstanceUID and "ReferencedFrameNumber" not in source
    tracking_uids = {
        item.UID
        for g in (segment_group, outline_group)
        for item in g.ContentSequence
        if item.ValueType == "UIDREF"
    }
    assert tracking_uids == {seg.SegmentSequence[0].TrackingUID}
    ((_, scoord),) = _scoords(sr)
    _assert_on_the_level(scoord, level)
    assert _evidence_uids(sr) == {str(level.SOPInstanceUID), str(seg.SOPInstanceUID)}
