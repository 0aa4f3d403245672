"""``dicom_node.load`` on real series: CT, MR, CR, ultrasound, microscopy, enhanced and converted multi-frame.

The data sit in ../shared/data (see its README), in pydicom's bundled test files and in the ``pydicom-data``
package (tests that need the latter are skipped where it is not installed). Series that real archives hold
but the test data lack (gantry tilt, mixed series, repeated acquisitions, shuffled order) are made from the
real CT by changing only what the case is about.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi
from pydicom.uid import generate_uid

from dicom_node.errors import LoadError
from dicom_node.load import MAX_SLIDE_SIDE, FrameSource, Volume, load_volume, read_series
from tests.helpers.peers import shared_data

CT_SLICES = 55


def _files(folder: str) -> list[Path]:
    return sorted(shared_data(folder).glob("*.dcm"))


def _lidc() -> list[Dataset]:
    """A fresh read of the chest CT, so a test may change it."""
    return read_series(_files("ct_chest_lidc0314"))


def _pydicom_data(name: str) -> str:
    """Path of a file of the ``pydicom-data`` package; the test is skipped where it is not installed."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package (pip install pydicom-data)")
    return str(path)


@pytest.fixture(scope="module")
def chest_ct() -> Volume:
    return load_volume(_lidc())


@pytest.fixture(scope="module")
def brain_mr_datasets() -> list[Dataset]:
    return read_series(_files("mr_brain_t1_sag_siemens"))


def test_chest_ct_is_in_hounsfield_units_with_distance_from_positions(chest_ct: Volume) -> None:
    assert chest_ct.array.shape == (CT_SLICES, 512, 512)
    assert chest_ct.array.dtype == np.float32
    assert chest_ct.spacing == (5.0, 0.78125, 0.78125)
    assert chest_ct.voxel_volume_ml == pytest.approx(5.0 * 0.78125**2 / 1000)
    assert chest_ct.modality == "CT"
    assert not chest_ct.is_color and not chest_ct.inverted
    assert chest_ct.window == (-450.0, 2000.0)
    # Hounsfield units: air outside the body, lungs, soft tissue, bone
    assert chest_ct.array.min() == pytest.approx(-1000, abs=30)
    assert 1000 < chest_ct.array.max() < 3100
    middle = chest_ct.array[CT_SLICES // 2]
    assert np.mean(middle < -900) > 0.2, "air and lungs"
    assert np.mean((middle > -100) & (middle < 100)) > 0.05, "soft tissue"
    # each slice is its source's stored values through Rescale Slope and Intercept
    source = chest_ct.datasets[7]
    expected = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    np.testing.assert_array_equal(chest_ct.array[7], expected.astype(np.float32))


def test_chest_ct_is_sorted_by_position_and_reports_its_traps(chest_ct: Volume) -> None:
    np.testing.assert_allclose(chest_ct.slice_direction, [0, 0, 1])
    z = chest_ct.positions[:, 2]
    np.testing.assert_allclose(np.diff(z), 5.0)
    np.testing.assert_array_equal(
        [float(d.ImagePositionPatient[2]) for d in chest_ct.datasets], z
    )  # datasets follow the slices
    np.testing.assert_array_equal(chest_ct.origin, chest_ct.positions[0])
    assert all(source.frame_number is None for source in chest_ct.frame_sources)
    assert [s.dataset for s in chest_ct.frame_sources] == chest_ct.datasets
    assert len(chest_ct.source_instances) == CT_SLICES
    notes = " ".join(chest_ct.notes)
    assert "SliceThickness is 1 mm but slices are 5 mm apart" in notes
    assert "55 different FrameOfReferenceUIDs" in notes
    assert chest_ct.frame_of_reference_uid == str(chest_ct.datasets[0].FrameOfReferenceUID)


def test_pixel_coordinates_agree_with_the_header_and_highdicom(chest_ct: Volume) -> None:
    source = chest_ct.datasets[10]
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    expected = np.asarray(source.ImagePositionPatient, float) + [20 * column_spacing, 30 * row_spacing, 0]
    np.testing.assert_allclose(chest_ct.patient_position_of(10, 30, 20), expected)
    volume = chest_ct.highdicom_volume()
    assert isinstance(volume, hd.Volume)
    np.testing.assert_allclose(volume.spacing, (5.0, 0.78125, 0.78125))
    mapped = volume.map_indices_to_reference(np.array([[10, 30, 20], [54, 511, 0]]))
    np.testing.assert_allclose(mapped[0], expected, atol=1e-6)
    np.testing.assert_allclose(mapped[1], chest_ct.patient_position_of(54, 511, 0), atol=1e-6)


def test_a_shuffled_series_is_sorted_the_same(chest_ct: Volume) -> None:
    datasets = _lidc()
    shuffled = [datasets[i] for i in np.random.default_rng(7).permutation(len(datasets))]
    assert [d.SOPInstanceUID for d in shuffled] != [d.SOPInstanceUID for d in datasets]
    volume = load_volume(shuffled)
    assert [d.SOPInstanceUID for d in volume.datasets] == [d.SOPInstanceUID for d in chest_ct.datasets]
    np.testing.assert_array_equal(volume.array, chest_ct.array)
    np.testing.assert_array_equal(volume.positions, chest_ct.positions)
    assert sorted(shuffled, key=lambda d: d.SOPInstanceUID) == sorted(_lidc(), key=lambda d: d.SOPInstanceUID)


def test_gantry_tilt_is_detected_and_reported(chest_ct: Volume) -> None:
    datasets = _lidc()
    shift = 5.0 * math.tan(math.radians(15.0))  # a 15 degree tilt moves each slice 1.34 mm in y
    by_uid = {str(d.SOPInstanceUID): d for d in datasets}
    for index, reference in enumerate(chest_ct.datasets):
        dataset = by_uid[str(reference.SOPInstanceUID)]
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y + index * shift, z]
    volume = load_volume(datasets)
    assert volume.tilt_degrees == pytest.approx(15.0, abs=0.01)
    assert volume.spacing == pytest.approx((5.0, 0.78125, 0.78125))  # between slice planes
    tilt_notes = [n for n in volume.notes if "gantry tilt" in n]
    assert len(tilt_notes) == 1 and "15.0 degrees" in tilt_notes[0] and "1.340 mm" in tilt_notes[0]
    for index in (0, 20, 54):
        np.testing.assert_allclose(
            volume.patient_position_of(index, 0, 0), chest_ct.positions[index] + [0, index * shift, 0]
        )
    with pytest.raises(ValueError, match="gantry tilt"):
        volume.highdicom_volume()
    assert load_volume(_lidc()).tilt_degrees == 0.0


def test_a_mixed_series_keeps_the_largest_stack_and_names_what_it_left_out(chest_ct: Volume) -> None:
    datasets = _lidc()
    smaller = copy.deepcopy(datasets[0])
    smaller.PixelData = smaller.pixel_array[:256, :256].copy().tobytes()
    smaller.Rows = smaller.Columns = 256
    smaller.SOPInstanceUID = generate_uid()
    sagittal = copy.deepcopy(datasets[1])
    sagittal.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    sagittal.SOPInstanceUID = generate_uid()
    volume = load_volume([smaller, *datasets, sagittal])
    np.testing.assert_array_equal(volume.array, chest_ct.array)
    assert volume.spacing == (5.0, 0.78125, 0.78125)
    [note] = [n for n in volume.notes if "mixes" in n]
    assert "mixes 3 kinds" in note and "kept the largest consistent stack (55 image(s) of 512x512" in note
    assert (
        f"256x256 oriented (1, 0, 0, 0, 1, 0), pixel spacing 0.78125x0.78125 mm (instances {smaller.SOPInstanceUID})"
        in note
    )
    assert (
        f"oriented (0, 1, 0, 0, 0, -1), pixel spacing 0.78125x0.78125 mm (instances {sagittal.SOPInstanceUID})"
        in note
    )


def test_acquisitions_at_the_same_positions_are_told_apart(chest_ct: Volume) -> None:
    datasets = _lidc()
    repeats = []
    for dataset in datasets[:5]:
        repeat = copy.deepcopy(dataset)
        repeat.SOPInstanceUID = generate_uid()
        repeat.AcquisitionNumber = 2
        repeat.PixelData = (repeat.pixel_array // 2).tobytes()
        repeats.append(repeat)
    volume = load_volume(repeats + datasets)
    np.testing.assert_array_equal(volume.array, chest_ct.array)
    assert any("told apart by AcquisitionNumber" in n and "left out 2: 5" in n for n in volume.notes)
    duplicate = copy.deepcopy(datasets[3])
    duplicate.SOPInstanceUID = generate_uid()
    with pytest.raises(LoadError, match=r"share slice positions \(1 of 55 positions"):
        load_volume([*datasets, duplicate])


def test_sagittal_mr_slices_go_along_the_normal(brain_mr_datasets: list[Dataset]) -> None:
    volume = load_volume(brain_mr_datasets)
    assert volume.array.shape == (35, 256, 256)
    assert volume.modality == "MR"
    np.testing.assert_allclose(volume.row_direction, [0, 1, 0])
    np.testing.assert_allclose(volume.column_direction, [0, 0, -1])
    np.testing.assert_allclose(volume.slice_direction, [-1, 0, 0])  # right to left along -x
    assert volume.spacing == pytest.approx((4.8, 1.015625, 1.015625), abs=1e-5)
    np.testing.assert_allclose(volume.positions[[0, -1], 0], [81.6, -81.6], atol=1e-4)
    assert any("SliceThickness is 4 mm but slices are 4.8 mm apart" in n for n in volume.notes)
    assert volume.array.min() == 0 and volume.array.max() > 500


@pytest.mark.filterwarnings('ignore:The string "HFS" is unlikely:UserWarning')
def test_legacy_converted_enhanced_mr_loads_like_its_single_frames(brain_mr_datasets: list[Dataset]) -> None:
    single_frames = load_volume(brain_mr_datasets)
    shuffled = [brain_mr_datasets[i] for i in np.random.default_rng(3).permutation(35)]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=shuffled,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    volume = load_volume([enhanced])
    np.testing.assert_array_equal(volume.array, single_frames.array)
    np.testing.assert_allclose(volume.positions, single_frames.positions)
    assert volume.spacing == pytest.approx(single_frames.spacing)
    assert volume.pixel_spacing_source == "PixelMeasuresSequence"
    assert volume.datasets == [enhanced] * 35 and volume.source_instances == [enhanced]
    frame_numbers = [source.frame_number for source in volume.frame_sources]
    assert sorted(frame_numbers) == list(range(1, 36))
    for index in (0, 17, 34):
        item = enhanced.PerFrameFunctionalGroupsSequence[frame_numbers[index] - 1]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], volume.positions[index])
    first = enhanced.PerFrameFunctionalGroupsSequence[frame_numbers[0] - 1].FrameVOILUTSequence[0]
    assert volume.window == (float(first.WindowCenter), float(first.WindowWidth)) == (523.0, 1071.0)
    assert volume.window == single_frames.window  # the first slice's window, from Frame VOI LUT


@pytest.mark.filterwarnings('ignore:The string "HFS" is unlikely:UserWarning')
def test_a_multi_frame_with_two_acquisitions_keeps_the_larger(brain_mr_datasets: list[Dataset]) -> None:
    repeats = []
    for dataset in brain_mr_datasets[:10]:
        repeat = copy.deepcopy(dataset)
        repeat.SOPInstanceUID = generate_uid()
        repeat.AcquisitionNumber = 2
        repeat.PixelData = (repeat.pixel_array // 3).tobytes()
        repeats.append(repeat)
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=[*brain_mr_datasets, *repeats],
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    assert enhanced.NumberOfFrames == 45
    volume = load_volume([enhanced])
    np.testing.assert_array_equal(volume.array, load_volume(brain_mr_datasets).array)
    assert any(
        "told apart by AcquisitionNumber; kept AcquisitionNumber 1 (35 images), left out 2: 10" in n
        for n in volume.notes
    )


def test_enhanced_ct_frames_are_sorted_with_per_frame_rescale() -> None:
    dataset = pydicom.dcmread(_pydicom_data("eCT_Supplemental.dcm"))
    volume = load_volume([dataset])
    # frame 1 lies at z -159, frame 2 at z -149; the normal of (-1,0,0 / 0,1,0) points to -z
    np.testing.assert_allclose(volume.slice_direction, [0, 0, -1])
    assert volume.frame_sources == [FrameSource(dataset, 2), FrameSource(dataset, 1)]
    np.testing.assert_allclose(volume.positions[:, 2], [-149.0, -159.0])
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert volume.pixel_spacing_source == "PixelMeasuresSequence"
    assert volume.window == (49.0, 102.0)
    stored = dataset.pixel_array
    np.testing.assert_array_equal(volume.array, (stored[[1, 0]].astype(np.float32) - 1024.0))
    reference = hd.Image.from_dataset(dataset, copy=True).get_frames(
        [2, 1], dtype=np.float32, apply_real_world_transform=False
    )
    np.testing.assert_array_equal(volume.array, reference)
    assert not any("SliceThickness" in n for n in volume.notes)  # 10 mm thick, 10 mm apart


def test_monochrome1_cr_in_jpeg_2000() -> None:
    dataset = pydicom.dcmread(_files("cr_chest_philips_j2k")[0])
    volume = load_volume([dataset])
    assert volume.array.shape == (1, 1955, 1841)
    assert volume.photometric_interpretation == "MONOCHROME1" and volume.inverted
    uncompressed = pydicom.dcmread(_pydicom_data("RG1_UNCI.dcm"))  # the same lossy image, uncompressed
    np.testing.assert_array_equal(volume.array[0], uncompressed.pixel_array.astype(np.float32))
    assert volume.window == (15000.0, 30000.0)
    shown = volume.display_array()
    brightest, darkest = (
        np.unravel_index(np.argmax(volume.array), volume.array.shape),
        np.unravel_index(np.argmin(volume.array), volume.array.shape),
    )
    assert shown[brightest] < 0.2 < 0.8 < shown[darkest]  # high MONOCHROME1 values are shown dark
    value = float(volume.array[0, 1000, 900])
    assert shown[0, 1000, 900] == pytest.approx(1.0 - ((value - 14999.5) / 29999 + 0.5), abs=1e-6)
    # PixelSpacing 0\0 is no spacing: nothing may be measured
    assert volume.pixel_spacing is None and volume.spacing is None
    assert any("PixelSpacing 0.000\\0.000 is not a spacing" in n for n in volume.notes)
    with pytest.raises(ValueError, match="cannot be measured"):
        _ = volume.voxel_volume_ml
    with pytest.raises(ValueError, match="no plane geometry"):
        volume.patient_position_of(0, 0, 0)
    np.testing.assert_allclose(volume.row_direction, [1, 0, 0])  # Patient Orientation L\F
    np.testing.assert_allclose(volume.column_direction, [0, 0, -1])


def test_projection_spacing_comes_from_pixel_spacing_or_imager_pixel_spacing() -> None:
    dataset = pydicom.dcmread(_files("cr_chest_philips_j2k")[0], stop_before_pixels=False)
    del dataset.PixelSpacing
    dataset.ImagerPixelSpacing = [0.2, 0.15]
    dataset.EstimatedRadiographicMagnificationFactor = 1.1
    volume = load_volume([dataset])
    assert volume.pixel_spacing == (0.2, 0.15) and volume.pixel_spacing_source == "ImagerPixelSpacing"
    assert volume.spacing is None  # a projection has no slice distance
    [note] = [n for n in volume.notes if n.startswith("pixel spacing")]
    assert "from ImagerPixelSpacing (at the detector plane" in note and "Factor is 1.1" in note
    dataset.PixelSpacing = [0.18, 0.135]
    volume = load_volume([dataset])
    assert volume.pixel_spacing == (0.18, 0.135) and volume.pixel_spacing_source == "PixelSpacing"


def test_rgb_ultrasound_and_ycbcr_become_the_same_rgb() -> None:
    dataset = pydicom.dcmread(_files("us_ge_logiq700_rgb")[0])
    volume = load_volume([dataset])
    assert volume.is_color and volume.array.shape == (1, 480, 640, 3) and volume.array.dtype == np.uint8
    np.testing.assert_array_equal(volume.array[0], dataset.pixel_array)
    assert volume.window is None and volume.spacing is None and volume.row_direction is None
    np.testing.assert_allclose(volume.display_array()[0, 100, 200], dataset.pixel_array[100, 200] / 255.0)
    reversible_ycbcr = load_volume([pydicom.dcmread(_pydicom_data("US1_J2KR.dcm"))])  # YBR_RCT JPEG 2000
    np.testing.assert_array_equal(reversible_ycbcr.array, volume.array)
    reference = load_volume([pydicom.dcmread(_pydicom_data("SC_rgb.dcm"))]).array.astype(int)
    for name in ("SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"):  # YBR_FULL_422
        converted = load_volume([pydicom.dcmread(get_testdata_file(name, download=False))])
        assert converted.is_color and converted.photometric_interpretation == "YBR_FULL_422"
        assert np.abs(converted.array.astype(int) - reference).mean() < 3.0, name


def test_palette_ultrasound_is_coloured_by_its_palette() -> None:
    dataset = pydicom.dcmread(_files("us_philips_cx50_palette")[0])
    volume = load_volume([dataset])
    assert volume.is_color and volume.array.shape == (1, 600, 800, 3)
    assert volume.photometric_interpretation == "PALETTE COLOR"
    palette = apply_color_lut(dataset.pixel_array, dataset)  # 16-bit palette entries
    assert palette.dtype == np.uint16
    np.testing.assert_array_equal(volume.array[0], np.round(palette * (255.0 / 65535.0)).astype(np.uint8))
    coloured = volume.array[0].astype(int)
    assert np.mean(np.ptp(coloured, axis=-1) > 30) > 0.001, "some pixels are not grey"
    assert volume.spacing is None and volume.pixel_spacing is None
    assert any("SequenceOfUltrasoundRegions" in n and "2 region(s)" in n for n in volume.notes)


def test_one_mr_slice_in_five_transfer_syntaxes_decodes_the_same() -> None:
    volumes = {path.name: load_volume([pydicom.dcmread(path)]) for path in _files("ts_mr_siemens_trio_5ts")}
    assert sorted(volumes) == ["1.dcm", "4.dcm", "5.dcm", "7.dcm", "9.dcm"]
    reference = volumes["1.dcm"]
    assert reference.array.shape == (1, 384, 384) and reference.array.max() == 2362
    source = reference.datasets[0]
    np.testing.assert_array_equal(reference.array[0], source.pixel_array.astype(np.float32))
    for name, volume in volumes.items():
        np.testing.assert_array_equal(volume.array, reference.array, err_msg=name)
        np.testing.assert_allclose(volume.slice_direction, reference.slice_direction)
    np.testing.assert_allclose(reference.slice_direction, [0, 0.1079994, 0.9941510], atol=1e-6)  # oblique
    assert reference.spacing == (3.0, 3.25, 3.25)  # one slice: its thickness, said so
    assert any("single slice" in n and "3 mm" in n for n in reference.notes)


@pytest.mark.filterwarnings("ignore:.*JFIF APP marker:UserWarning")
def test_whole_slide_level_is_assembled_from_its_tiles() -> None:
    files = _files("sm_wsi_cmu1_jpeg")
    volume = load_volume(read_series(files))
    assert MAX_SLIDE_SIDE == 2048
    assert volume.modality == "SM" and volume.is_color
    assert volume.array.shape == (1, 1483, 1110, 3)
    level = volume.datasets[0]
    assert (level.TotalPixelMatrixRows, level.TotalPixelMatrixColumns) == (1483, 1110)
    tiles = level.pixel_array  # 9 tiles of 500x500, 3 per row (TILED_FULL, row-major)
    np.testing.assert_array_equal(volume.array[0, :500, 500:1000], tiles[1])
    np.testing.assert_array_equal(volume.array[0, 1000:1483, 1000:1110], tiles[8][:483, :110])
    red, green, blue = volume.array[0].reshape(-1, 3).mean(axis=0)
    assert red > blue > green  # H&E: pink
    assert volume.pixel_spacing == (0.000998, 0.000998) and volume.spacing is None
    assert any("whole-slide image: level 1483x1110 assembled from 9 tile(s)" in n for n in volume.notes)
    level_0 = [pydicom.dcmread(path) for path in files if path.name.startswith("level-0-")]
    with pytest.raises(LoadError, match="larger than 2048 px on a side"):
        load_volume(level_0)


def test_voi_lut_sequence_is_applied_for_display() -> None:
    dataset = pydicom.dcmread(_pydicom_data("vlut_04.dcm"))
    volume = load_volume([dataset])
    assert volume.window == (128.0, 256.0)  # the LUT's input range
    expected = apply_voi(dataset.pixel_array, dataset, index=0) / 65535.0
    np.testing.assert_allclose(volume.display_array()[0], expected, atol=1e-6)
    np.testing.assert_allclose(volume.display_array(window=(100.0, 1.0))[0], dataset.pixel_array > 99.5)


def test_a_single_ct_slice_and_errors() -> None:
    volume = load_volume([pydicom.dcmread(get_testdata_file("CT_small.dcm"))])
    assert volume.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    assert any("window" in n and "computed" in n for n in volume.notes)
    no_pixels = Dataset()
    no_pixels.SOPInstanceUID = generate_uid()
    with pytest.raises(LoadError, match="no instance of the series carries pixel data"):
        load_volume([no_pixels])
    with pytest.raises(ValueError, match="'frame_sources' length 2"):
        Volume(
            array=volume.array,
            datasets=volume.datasets,
            spacing=volume.spacing,
            origin=None,
            row_direction=None,
            column_direction=None,
            slice_direction=None,
            modality="CT",
            frame_sources=volume.frame_sources * 2,
        )
