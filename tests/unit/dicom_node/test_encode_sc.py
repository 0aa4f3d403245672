"""SC key image: rendering, patient/study copied from the source, determinism, dciodvfy; the whole chain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dicom_node.encode import OutputKind, encode_segmentation_results
from dicom_node.encode.common import segment_color
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
    inverted = render_grey(dataclasses.replace(chest_ct, inverted=True), index, LUNG_WINDOW)
    assert np.abs(inverted.astype(int) - (255 - normal.astype(int))).max() <= 1  # rounding after inversion


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
    assert [o.kind for o in objects] == [OutputKind.SR, OutputKind.SC]
    key_image = objects[1].dataset
    assert key_image.SourceImageSequence[0].ReferencedSOPInstanceUID == chest_ct.datasets[3].SOPInstanceUID


def test_sc_records_the_burned_in_overlay(sc) -> None:
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.ImageComments == "AI overlay burned in"
    assert sc.BurnedInAnnotation == "NO"  # the legend names structures, nothing that identifies the patient


def _untouched(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels away from the mask (and its outline) and from the legend in the top-left corner."""
    away = ~ndimage.binary_dilation(mask, iterations=4)
    away[: pixels.shape[0] // 8, : pixels.shape[1] // 3] = False
    return away


def test_sc_of_the_monochrome1_radiograph_uses_its_window_and_shows_lungs_dark(
    chest_cr, cr_lung_mask, encoding_context, tmp_path, dciodvfy
) -> None:
    dataset = encode_sc(chest_cr, {"lung": cr_lung_mask}, [], "threshold", "1", encoding_context)
    path = tmp_path / "sc.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    sc = pydicom.dcmread(path)
    source = chest_cr.datasets[0]
    assert sc.pixel_array.shape == (1955, 1841, 3)
    assert list(sc.PatientOrientation) == ["L", "F"]
    assert (sc.PatientName, sc.PatientID, sc.BodyPartExamined) == (
        source.PatientName,
        source.PatientID,
        "CHEST",
    )
    assert "PixelSpacing" not in sc  # the source says 0.000: unknown
    center, width = float(source.WindowCenter), float(source.WindowWidth)
    raw = chest_cr.array[0]
    expected = 255 - np.round(np.clip((raw - (center - width / 2)) / width, 0, 1) * 255)
    away = _untouched(sc.pixel_array, cr_lung_mask[0])
    assert np.abs(sc.pixel_array[away][:, 0].astype(int) - expected[away]).max() <= 1
    lungs = ndimage.binary_erosion(cr_lung_mask[0], iterations=10)
    assert sc.pixel_array[lungs].mean() < sc.pixel_array[away].mean()  # air is dark after inversion


@pytest.mark.parametrize(
    "volume_name, mask_name", [("us_rgb", "lymph_node_mask"), ("us_palette", "sector_mask")]
)
def test_sc_of_colour_ultrasound_is_in_colour_and_flags_its_burned_in_text(
    volume_name, mask_name, request, encoding_context, tmp_path, dciodvfy
) -> None:
    volume, mask = request.getfixturevalue(volume_name), request.getfixturevalue(mask_name)
    dataset = encode_sc(volume, {"lesion": mask}, [], "threshold", "1", encoding_context)
    path = tmp_path / "sc.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    sc = pydicom.dcmread(path)
    away = _untouched(sc.pixel_array, mask[0])
    np.testing.assert_array_equal(sc.pixel_array[away], volume.array[0][away])
    assert np.any(volume.array[0][..., 0] != volume.array[0][..., 2])  # really in colour
    assert sc.BurnedInAnnotation == "YES"  # the ultrasound's own burned-in header is copied
    assert sc.Modality == "OT" and sc.StudyInstanceUID == volume.study_instance_uid


def test_sc_renders_a_colour_source_behind_a_grey_volume(us_palette, sector_mask, encoding_context) -> None:
    grey = dataclasses.replace(
        us_palette, array=us_palette.array.mean(axis=-1).astype(np.float32), is_color=False
    )
    from_source = encode_sc(grey, {"lesion": sector_mask}, [], "threshold", "1", encoding_context)
    from_volume = encode_sc(us_palette, {"lesion": sector_mask}, [], "threshold", "1", encoding_context)
    np.testing.assert_array_equal(from_source.pixel_array, from_volume.pixel_array)


def test_sc_of_the_whole_slide_image_shows_its_tissue(
    whole_slide, tissue_mask, encoding_context, tmp_path, dciodvfy
) -> None:
    dataset = encode_sc(whole_slide, {"tissue": tissue_mask}, [], "threshold", "1", encoding_context)
    path = tmp_path / "sc.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    assert dciodvfy(path) == [], dciodvfy_output(path)
    sc = pydicom.dcmread(path)
    assert sc.pixel_array.shape == (1483, 1110, 3)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == whole_slide.datasets[0].SOPInstanceUID
    away = _untouched(sc.pixel_array, tissue_mask[0])
    np.testing.assert_array_equal(sc.pixel_array[away], whole_slide.array[0][away])
