"""SR encoder (TID 1500): volumes and areas, references to the SEG and the source, outlines, dciodvfy."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file
from scipy import ndimage

from dicom_node.encode.seg import encode_seg
from dicom_node.encode.sr import encode_sr, key_slice, outline
from dicom_node.load import load_volume
from tests.unit.dicom_node.conftest import ALGORITHM_NAME, ALGORITHM_VERSION, all_uids, dciodvfy_output

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
