"""SEG encoder: round trip through a file, geometry trap of the lidc series, determinism, dciodvfy."""

from __future__ import annotations

import dataclasses
import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage

from config.settings import parse_settings
from dicom_node.encode import (
    EncodingContext,
    OutputKind,
    encode_results,
    output_uids,
    series_number,
    structure_codes,
)
from dicom_node.encode.common import segment_color
from dicom_node.encode.seg import encode_seg
from dicom_node.errors import EncodeError
from dicom_node.load import load_volume
from tests.unit.dicom_node.conftest import ALGORITHM_NAME, ALGORITHM_VERSION, all_uids, dciodvfy_output
from tools.base import ToolResult, ToolStatus


@pytest.fixture(scope="module")
def seg_file(chest_ct, lung_masks, encoding_context, tmp_path_factory):
    dataset = encode_seg(chest_ct, lung_masks, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context)
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def seg(seg_file):
    return hd.seg.segread(seg_file)


def test_seg_is_binary_with_one_segment_per_structure_and_empty_frames_kept(seg) -> None:
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert int(seg.NumberOfFrames) == 55 * 2
    labels = [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence]
    assert labels == [(1, "left lung"), (2, "right lung")]
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == ALGORITHM_NAME
        assert algorithm.AlgorithmVersion == ALGORITHM_VERSION
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        assert item.TrackingID == item.SegmentLabel
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["44029006", "3341006"]
    colours = [tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence]
    assert len(set(colours)) == 2
    assert colours[0] == tuple(hd.color.CIELabColor.from_rgb(*segment_color(0)).value)


def test_seg_pixels_equal_the_masks_slice_by_slice(seg, chest_ct, lung_masks) -> None:
    source_uids = [str(d.SOPInstanceUID) for d in chest_ct.datasets]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids, segment_numbers=[1, 2], combine_segments=False, dtype=bool
    )
    assert pixels.shape == (55, 512, 512, 2)
    np.testing.assert_array_equal(pixels[..., 0], lung_masks["left lung"])
    np.testing.assert_array_equal(pixels[..., 1], lung_masks["right lung"])


def test_seg_joins_the_study_in_a_new_series_in_one_frame_of_reference(seg, chest_ct) -> None:
    source = chest_ct.datasets[0]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SeriesNumber == 9001
    assert seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.PatientID == source.PatientID
    expected = sorted(float(d.ImagePositionPatient[2]) for d in chest_ct.datasets)
    for segment_number in (1, 2):
        positions = [
            float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
            for frame in seg.PerFrameFunctionalGroupsSequence
            if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber == segment_number
        ]
        assert sorted(positions) == expected


def test_seg_names_the_node_as_contributing_equipment(seg) -> None:
    items = [
        item
        for item in seg.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]
    assert len(items) == 1
    item = items[0]
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("99IHE", "Processing Algorithm")
    assert item.Manufacturer == "MedAgent"
    assert item.ManufacturerModelName == "MedAgent Node"
    assert item.InstitutionName == "Test Hospital"
    assert f"{ALGORITHM_NAME} {ALGORITHM_VERSION}" in list(item.SoftwareVersions)


def test_seg_uids_are_deterministic(chest_ct, lung_masks, encoding_context, seg) -> None:
    again = encode_seg(chest_ct, lung_masks, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (seg.SOPInstanceUID, seg.SeriesInstanceUID)
    assert all_uids(again) == all_uids(seg)
    other = encode_seg(chest_ct, lung_masks, ALGORITHM_NAME, "2.0", encoding_context)
    assert other.SOPInstanceUID != seg.SOPInstanceUID
    assert other.SeriesInstanceUID != seg.SeriesInstanceUID


def test_seg_leaves_the_callers_datasets_alone_and_logs_uids_only(
    chest_ct, lung_masks, encoding_context, caplog
) -> None:
    before = [str(d.FrameOfReferenceUID) for d in chest_ct.datasets]
    with caplog.at_level(logging.INFO, logger="dicom_node.encode"):
        encode_seg(chest_ct, {"left lung": lung_masks["left lung"]}, ALGORITHM_NAME, "3", encoding_context)
    assert [str(d.FrameOfReferenceUID) for d in chest_ct.datasets] == before
    assert len(set(before)) == 55
    assert "PixelData" in chest_ct.datasets[0]
    messages = [r.getMessage() for r in caplog.records if r.name == "dicom_node.encode.seg"]
    assert any("Frame of Reference" in m and str(before[0]) in m for m in messages), messages
    assert not any(str(chest_ct.datasets[0].PatientID) in m for m in messages)


def test_seg_of_a_single_slice_has_one_frame_per_segment(encoding_context, tmp_path, dciodvfy) -> None:
    volume = load_volume([pydicom.dcmread(get_testdata_file("CT_small.dcm"))])
    masks = {"Body": volume.array > -500, "nodule": np.zeros(volume.array.shape, bool)}
    dataset = encode_seg(volume, masks, "threshold", "1", encoding_context)
    path = tmp_path / "seg.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    seg = hd.seg.segread(path)
    assert int(seg.NumberOfFrames) == 2
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Body", "nodule"]
    nodule = seg.SegmentSequence[1]
    assert nodule.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert nodule.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    pixels = seg.get_pixels_by_source_instance(
        [str(volume.datasets[0].SOPInstanceUID)], segment_numbers=[1, 2], dtype=bool
    )
    np.testing.assert_array_equal(pixels[0, ..., 0], masks["Body"][0])
    assert not pixels[..., 1].any()
    errors = dciodvfy(path)
    assert errors == [], dciodvfy_output(path)


def test_seg_passes_dciodvfy(seg_file, dciodvfy) -> None:
    errors = dciodvfy(seg_file)
    assert errors == [], dciodvfy_output(seg_file)


def test_seg_rejects_a_mask_of_the_wrong_shape(chest_ct, encoding_context) -> None:
    with pytest.raises(EncodeError, match="'liver'"):
        encode_seg(chest_ct, {"liver": np.zeros((3, 4, 5), bool)}, "x", "1", encoding_context)
    with pytest.raises(EncodeError, match="masks"):
        encode_seg(chest_ct, {}, "x", "1", encoding_context)
    empty = np.zeros(chest_ct.array.shape, bool)
    with pytest.raises(EncodeError, match="'lung'"):
        encode_seg(chest_ct, {"lung": empty, "lung ": empty}, "x", "1", encoding_context)


def test_structure_codes_cover_laterality_and_unknown_labels() -> None:
    assert structure_codes("Left Lung").type.value == "44029006"
    assert structure_codes("lungs").type.value == "39607008"
    kidney = structure_codes("left kidney")
    assert (kidney.type.value, kidney.laterality.value) == ("64033007", "7771000")
    unknown = structure_codes("something odd")
    assert not unknown.known
    assert (unknown.category.value, unknown.type.value) == ("85756007", "85756007")


def test_unknown_and_lateral_labels_still_encode(encoding_context) -> None:
    volume = load_volume([pydicom.dcmread(get_testdata_file("CT_small.dcm"))])
    masks = {"something odd": volume.array > 0, "left kidney": volume.array > 100}
    dataset = encode_seg(volume, masks, "threshold", "1", encoding_context)
    kidney = dataset.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    assert dataset.SegmentSequence[1].SegmentLabel == "something odd"


def test_context_from_settings_series_numbers_and_uids(chest_ct) -> None:
    settings = parse_settings({"node": {"uid_prefix": "1.2.3.", "series_number_base": 500}}, environ={})
    context = EncodingContext.from_settings(settings)
    assert (context.uid_prefix, context.node_ae_title) == ("1.2.3.", "MEDAGENT")
    assert [series_number(context, kind) for kind in ("SEG", "SR", "SC")] == [501, 502, 503]
    seg_uids = output_uids(context, chest_ct, OutputKind.SEG, "tool", "1")
    assert seg_uids == output_uids(context, chest_ct, "SEG", "tool", "1")
    assert seg_uids != output_uids(context, chest_ct, OutputKind.SR, "tool", "1")
    assert all(uid.startswith("1.2.3.") and len(uid) <= 64 for uid in seg_uids)
    other_series = dataclasses.replace(chest_ct, datasets=chest_ct.datasets[:-1])
    assert output_uids(context, other_series, OutputKind.SEG, "tool", "1") != seg_uids
    with pytest.raises(ValueError, match="'uid_prefix'"):
        EncodingContext(uid_prefix="1.2.3", series_number_base=1, institution_name="x", node_ae_title="A")


def _read_seg(dataset, tmp_path, name="seg.dcm"):
    path = tmp_path / name
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return path, hd.seg.segread(path)


def test_probability_maps_become_a_fractional_seg(
    chest_ct, lung_masks, encoding_context, tmp_path, dciodvfy
) -> None:
    probability = {
        label: ndimage.gaussian_filter(mask.astype(np.float32), sigma=(0, 2, 2))
        for label, mask in lung_masks.items()
    }
    dataset = encode_seg(chest_ct, probability, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context)
    path, seg = _read_seg(dataset, tmp_path)
    assert (seg.SegmentationType, seg.SegmentationFractionalType) == ("FRACTIONAL", "PROBABILITY")
    assert int(seg.MaximumFractionalValue) == 255
    assert int(seg.NumberOfFrames) == 55 * 2
    stored = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in chest_ct.datasets], segment_numbers=[1, 2], combine_segments=False
    )
    for number, label in enumerate(sorted(lung_masks)):
        np.testing.assert_allclose(stored[..., number], probability[label], atol=0.5 / 255 + 1e-6)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    smaller = encode_seg(
        chest_ct, probability, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context, max_fractional_value=100
    )
    assert int(smaller.MaximumFractionalValue) == 100
    binary = encode_seg(
        chest_ct, probability, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context, segmentation_type="BINARY"
    )
    assert binary.SegmentationType == "BINARY"
    with pytest.raises(EncodeError, match="within 0..1"):
        encode_seg(chest_ct, {"lung": probability["left lung"] * 2}, "x", "1", encoding_context)


def test_labelmap_only_when_asked_and_only_without_overlap(
    chest_ct, lung_masks, encoding_context, tmp_path
) -> None:
    assert encode_seg(chest_ct, lung_masks, "x", "1", encoding_context).SegmentationType == "BINARY"
    dataset = encode_seg(chest_ct, lung_masks, "x", "1", encoding_context, segmentation_type="LABELMAP")
    _, seg = _read_seg(dataset, tmp_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage
    assert seg.SegmentationType == "LABELMAP"
    assert int(seg.NumberOfFrames) == 55
    labels = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in chest_ct.datasets], combine_segments=True
    )
    np.testing.assert_array_equal(labels == 1, lung_masks["left lung"])
    np.testing.assert_array_equal(labels == 2, lung_masks["right lung"])
    overlapping = {"lung": lung_masks["left lung"], "left lung": lung_masks["left lung"]}
    with pytest.raises(EncodeError, match="overlap"):
        encode_seg(chest_ct, overlapping, "x", "1", encoding_context, segmentation_type="LABELMAP")
    with pytest.raises(EncodeError, match="segmentation_type"):
        encode_seg(chest_ct, lung_masks, "x", "1", encoding_context, segmentation_type="PROBABILITY")


def test_omit_empty_frames_is_an_option(chest_ct, lung_masks, encoding_context) -> None:
    kept = encode_seg(chest_ct, lung_masks, "x", "1", encoding_context)
    omitted = encode_seg(chest_ct, lung_masks, "x", "1", encoding_context, omit_empty_frames=True)
    with_pixels = sum(int(np.count_nonzero(m.any(axis=(1, 2)))) for m in lung_masks.values())
    assert (int(kept.NumberOfFrames), int(omitted.NumberOfFrames)) == (110, with_pixels)


def test_sagittal_mr_seg_references_and_places_every_slice(
    brain_mr, head_mask, encoding_context, tmp_path, dciodvfy
) -> None:
    dataset = encode_seg(brain_mr, {"head": head_mask}, "MR threshold", "1", encoding_context)
    path, seg = _read_seg(dataset, tmp_path)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    assert int(seg.NumberOfFrames) == 35
    positions = {str(d.SOPInstanceUID): [float(v) for v in d.ImagePositionPatient] for d in brain_mr.datasets}
    orientation = [float(v) for v in brain_mr.datasets[0].ImageOrientationPatient]
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient], orientation
    )
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            positions[source],
            atol=1e-3,
        )
    pixels = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in brain_mr.datasets], segment_numbers=[1], dtype=bool
    )
    np.testing.assert_array_equal(pixels[..., 0], head_mask)


@pytest.mark.parametrize(
    "volume_name, mask_name", [("chest_cr", "cr_lung_mask"), ("us_rgb", "lymph_node_mask")]
)
def test_seg_of_a_2d_image_has_one_frame_and_no_plane_position(
    volume_name, mask_name, request, encoding_context, tmp_path, dciodvfy
) -> None:
    volume, mask = request.getfixturevalue(volume_name), request.getfixturevalue(mask_name)
    source = volume.datasets[0]
    dataset = encode_seg(volume, {"lesion": mask}, "threshold", "1", encoding_context)
    path, seg = _read_seg(dataset, tmp_path)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    assert int(seg.NumberOfFrames) == 1
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = seg.get("PerFrameFunctionalGroupsSequence") or [shared]
    for frame in frames:
        assert "PlanePositionSequence" not in frame
    assert "PlanePositionSequence" not in shared and "PlaneOrientationSequence" not in shared
    derivation = (frames[0].get("DerivationImageSequence") or shared.DerivationImageSequence)[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert list(seg.get("PatientOrientation") or []) == list(source.get("PatientOrientation") or [])
    if "PixelMeasuresSequence" in shared:
        assert all(float(v) > 0 for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pixels = seg.get_pixels_by_source_instance([str(source.SOPInstanceUID)], segment_numbers=[1], dtype=bool)
    np.testing.assert_array_equal(pixels[0, ..., 0], mask[0])


def test_seg_over_the_whole_slide_image_names_what_it_lacks(
    whole_slide, tissue_mask, encoding_context
) -> None:
    """The test slide's converter left out Type 1 slide geometry; a tiled SEG would have to invent it."""
    with pytest.raises(EncodeError, match="TotalPixelMatrixOriginSequence.*OpticalPathSequence"):
        encode_seg(whole_slide, {"tissue": tissue_mask}, "threshold", "1", encoding_context)
    objects = encode_results(
        whole_slide,
        ToolResult(status=ToolStatus.OK, masks={"tissue": tissue_mask}),
        "t",
        "1",
        encoding_context,
    )
    assert [o.kind for o in objects] == [OutputKind.SR, OutputKind.SC]  # the SR outlines, no SEG to reference


def test_seg_over_a_completed_whole_slide_image_tiles_the_mask_over_its_total_pixel_matrix(
    completed_slide, whole_slide, tissue_mask, encoding_context, tmp_path, dciodvfy
) -> None:
    """The same slide with the Type 1 slide geometry its converter left out (``complete_slide_geometry``)."""
    level = completed_slide.datasets[0]
    assert level.SOPInstanceUID == whole_slide.datasets[0].SOPInstanceUID  # the same level, 1483 x 1110
    np.testing.assert_array_equal(completed_slide.array, whole_slide.array)
    dataset = encode_seg(completed_slide, {"tissue": tissue_mask}, "threshold", "1", encoding_context)
    path, seg = _read_seg(dataset, tmp_path)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    assert (seg.DimensionOrganizationType, int(seg.NumberOfFrames)) == ("TILED_SPARSE", 9)
    assert (int(seg.TotalPixelMatrixRows), int(seg.TotalPixelMatrixColumns)) == (1483, 1110)
    assert (int(seg.Rows), int(seg.Columns)) == (int(level.Rows), int(level.Columns))
    assert seg.FrameOfReferenceUID == level.FrameOfReferenceUID
    assert [float(v) for v in seg.ImageOrientationSlide] == [float(v) for v in level.ImageOrientationSlide]
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == level.SOPInstanceUID
    pixel_spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in pixel_spacing] == [0.000998, 0.000998]
    pixels = seg.get_total_pixel_matrix(segment_numbers=[1], dtype=bool)
    assert pixels.shape == (1483, 1110, 1)
    np.testing.assert_array_equal(pixels[..., 0], tissue_mask[0])


def test_seg_of_a_multi_frame_source_references_its_frames(
    enhanced_ct, encoding_context, tmp_path, dciodvfy
) -> None:
    source = enhanced_ct.datasets[0]
    numbers = [frame.frame_number for frame in enhanced_ct.frame_sources]
    assert numbers == [2, 1]  # the loader sorts by position; the instance stores them the other way
    body = enhanced_ct.array > -500
    path, seg = _read_seg(
        encode_seg(enhanced_ct, {"body": body}, "threshold", "1", encoding_context), tmp_path
    )
    assert dciodvfy(path) == [], dciodvfy_output(path)
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID,
        source_frame_numbers=[1, 2],
        segment_numbers=[1],
        dtype=bool,
    )
    for index, number in enumerate(numbers):
        np.testing.assert_array_equal(pixels[number - 1, ..., 0], body[index])
    partial = dataclasses.replace(
        enhanced_ct,
        array=enhanced_ct.array[:1],
        datasets=enhanced_ct.datasets[:1],
        frame_sources=enhanced_ct.frame_sources[:1],
        positions=None,
    )
    with pytest.raises(EncodeError, match="every frame of exactly one instance"):
        encode_seg(partial, {"body": body[:1]}, "threshold", "1", encoding_context)
