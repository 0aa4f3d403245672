"""SC key image: rendering, patient/study copied from the source, determinism, dciodvfy; the whole chain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dicom_node.encode import OutputKind, encode_segmentation_results
from dicom_node.encode.common import metadata_view, segment_color
from dicom_node.encode.sc import LUNG_WINDOW, display_window, encode_sc, render_grey
from dicom_node.encode.sr import encode_sr
from dicom_node.errors import EncodeError
from tests.unit.dicom_node.conftest import ALGORITHM_NAME, ALGORITHM_VERSION, all_uids, dciodvfy_output
from tools.base import Box, ToolResult, ToolStatus

PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
    "BodyPartExamined",
    "SpecificCharacterSet",
)


def _key_slice(masks) -> int:
    return int(np.argmax(sum(m.sum(axis=(1, 2)) for m in masks.values())))


@pytest.fixture(scope="module")
def nodule_box(lung_masks) -> Box:
    frame = _key_slice(lung_masks)
    return Box(label="nodule", frame=frame, xyxy=(40, 60, 120, 140), score=0.8, rows=512, columns=512)


@pytest.fixture(scope="module")
def sc_file(chest_ct, lung_masks, nodule_box, encoding_context, tmp_path_factory):
    dataset = encode_sc(
        chest_ct, lung_masks, [nodule_box], ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context
    )
    path = tmp_path_factory.mktemp("sc") / "sc.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def sc(sc_file):
    return pydicom.dcmread(sc_file)


def test_sc_is_an_rgb_key_image_of_the_slice_with_most_mask(sc, chest_ct, lung_masks) -> None:
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert sc.pixel_array.shape == (512, 512, 3)
    assert sc.BurnedInAnnotation == "NO"
    assert sc.SeriesNumber == 9003
    assert sc.SeriesInstanceUID != chest_ct.series_instance_uid
    index = _key_slice(lung_masks)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == chest_ct.datasets[index].SOPInstanceUID
    purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in sc.ContributingEquipmentSequence]
    assert "Newcode1" in purposes


def test_sc_draws_each_mask_in_its_segment_colour(sc, lung_masks) -> None:
    pixels = sc.pixel_array
    index = _key_slice(lung_masks)
    for number, label in enumerate(sorted(lung_masks)):
        mask = lung_masks[label][index]
        interior = ndimage.binary_erosion(mask, iterations=4)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        edge[:60, :150] = False  # under the legend
        colour = np.array(segment_color(number))
        assert np.all(pixels[edge] == colour)
        tint = pixels[interior].astype(int)
        dominant = int(np.argmax(colour))
        assert np.mean(tint[:, dominant] > tint[:, (dominant + 1) % 3]) > 0.95
    untouched = ~np.any(np.stack([m[index] for m in lung_masks.values()]), axis=0)
    untouched[:60, :150] = False
    untouched[55:146, 35:126] = False  # the box
    grey = pixels[untouched]
    assert np.all(grey[:, 0] == grey[:, 1]) and np.all(grey[:, 1] == grey[:, 2])


def test_sc_draws_boxes_on_the_key_slice(sc, nodule_box) -> None:
    colour = np.array(segment_color(2))  # after the two lung segments
    x0, y0, x1, y1 = (int(v) for v in nodule_box.xyxy)
    assert np.all(sc.pixel_array[y0, x0 : x1 + 1] == colour)
    assert np.all(sc.pixel_array[y0 : y1 + 1, x1] == colour)


def test_sc_copies_patient_and_study_from_the_source(sc, chest_ct) -> None:
    source = chest_ct.datasets[0]
    differing = {
        keyword: (source[keyword].value, sc[keyword].value if keyword in sc else "(absent)")
        for keyword in PATIENT_AND_STUDY
        if keyword in source and (keyword not in sc or sc[keyword].value != source[keyword].value)
    }
    assert differing == {}
    assert sc.Modality == "OT"
    assert list(sc.PatientOrientation) == ["L", "P"]


def test_sc_windows_lungs_with_the_lung_window_and_inverts_monochrome1(chest_ct) -> None:
    assert display_window(chest_ct, ["left lung"], 0) == LUNG_WINDOW
    assert display_window(chest_ct, ["body"], 0) == (-450.0, 2000.0)
    index = 27
    normal = render_grey(chest_ct, index, LUNG_WINDOW)
    inverted_source = metadata_view(chest_ct.datasets[index])
    inverted_source.PhotometricInterpretation = "MONOCHROME1"
    datasets = list(chest_ct.datasets)
    datasets[index] = inverted_source
    inverted = render_grey(dataclasses.replace(chest_ct, datasets=datasets), index, LUNG_WINDOW)
    assert np.abs(inverted.astype(int) - (255 - normal.astype(int))).max() <= 1  # rounding after inversion
    assert chest_ct.datasets[index].PhotometricInterpretation == "MONOCHROME2"


def test_sc_is_deterministic(chest_ct, lung_masks, nodule_box, encoding_context, sc) -> None:
    again = encode_sc(chest_ct, lung_masks, [nodule_box], ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context)
    assert all_uids(again) == all_uids(sc)
    np.testing.assert_array_equal(again.pixel_array, sc.pixel_array)


def test_sc_passes_dciodvfy(sc_file, dciodvfy) -> None:
    errors = dciodvfy(sc_file)
    assert errors == [], dciodvfy_output(sc_file)


def test_sc_needs_a_mask_or_a_box(chest_ct, encoding_context) -> None:
    with pytest.raises(EncodeError, match="mask or box"):
        encode_sc(chest_ct, {}, [], ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context)


def test_segmentation_results_become_seg_then_sr_then_sc(chest_ct, lung_masks, encoding_context) -> None:
    result = ToolResult(status=ToolStatus.OK, engine=ALGORITHM_NAME, engine_version="1.0", masks=lung_masks)
    objects = encode_segmentation_results(
        chest_ct, result, ALGORITHM_NAME, ALGORITHM_VERSION, encoding_context
    )
    assert [o.kind for o in objects] == [OutputKind.SEG, OutputKind.SR, OutputKind.SC]
    seg, sr, sc = (o.dataset for o in objects)
    assert (seg.Modality, sr.Modality, sc.Modality) == ("SEG", "SR", "OT")
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in evidence
    assert len({seg.SeriesInstanceUID, sr.SeriesInstanceUID, sc.SeriesInstanceUID}) == 3
    assert {seg.StudyInstanceUID, sr.StudyInstanceUID, sc.StudyInstanceUID} == {chest_ct.study_instance_uid}
    nothing_found = ToolResult(status=ToolStatus.OK, masks={"nodule": np.zeros(chest_ct.array.shape, bool)})
    objects = encode_segmentation_results(chest_ct, nothing_found, "detector", "1", encoding_context)
    assert [o.kind for o in objects] == [OutputKind.SEG, OutputKind.SC]
    with pytest.raises(EncodeError, match="empty"):
        encode_sr(chest_ct, objects[0].dataset, nothing_found.masks, "detector", "1", encoding_context)
    boxes_only = ToolResult(
        status=ToolStatus.OK,
        boxes=[Box(label="nodule", frame=3, xyxy=(1, 1, 9, 9), score=0.5, rows=512, columns=512)],
    )
    objects = encode_segmentation_results(chest_ct, boxes_only, "grounding", "1", encoding_context)
    assert [o.kind for o in objects] == [OutputKind.SC]
    key_image = objects[0].dataset
    assert key_image.SourceImageSequence[0].ReferencedSOPInstanceUID == chest_ct.datasets[3].SOPInstanceUID
