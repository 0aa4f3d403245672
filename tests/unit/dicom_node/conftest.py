"""Fixtures for the encoder tests: real series from ../shared/data loaded with ``dicom_node.load`` (once
per session), masks derived from their pixels (Hounsfield ranges, thresholds and largest components; never
noise), dciodvfy.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

from dicom_node.encode import EncodingContext
from dicom_node.load import Volume, load_volume, read_series
from tests.helpers.peers import shared_data
from tools.grounding.hounsfield import ground

ALGORITHM_NAME = "CT Hounsfield anatomy"
ALGORITHM_VERSION = "1.0"


@pytest.fixture(scope="session")
def chest_ct() -> Volume:
    """``ct_chest_lidc0314``: 55 slices 5 mm apart, 1 mm thick, 55 different Frame of Reference UIDs."""
    return load_volume(read_series(sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))))


@pytest.fixture(scope="session")
def lung_masks(chest_ct: Volume) -> dict[str, np.ndarray]:
    masks = ground(chest_ct.array, ["left lung", "right lung"], chest_ct.row_direction)
    assert all(mask.any() for mask in masks.values())
    return masks


@pytest.fixture(scope="session")
def brain_mr() -> Volume:
    """``mr_brain_t1_sag_siemens``: 35 sagittal T1 slices, 256 x 256, 4 mm apart."""
    return load_folder("mr_brain_t1_sag_siemens")


def largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    labelled, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return labelled > 0
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, count + 1))
    return labelled == int(np.argmax(sizes)) + 1


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of ``values`` (256 bins)."""
    histogram, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = np.cumsum(histogram)
    mean = np.cumsum(histogram * centres)
    total_weight, total_mean = weight[-1], mean[-1]
    between = (total_mean * weight - mean * total_weight) ** 2 / np.maximum(
        weight * (total_weight - weight), 1
    )
    return float(centres[int(np.argmax(between[:-1]))])


@pytest.fixture(scope="session")
def head_mask(brain_mr: Volume) -> np.ndarray:
    """The head on the sagittal MR: above Otsu's threshold, holes filled per slice, the largest 3D part."""
    image = brain_mr.array
    head = image > otsu_threshold(image[image > 0])
    head = ndimage.binary_opening(head, structure=np.ones((1, 3, 3), bool))
    head = np.stack([ndimage.binary_fill_holes(s) for s in head])
    head = largest_component(head)
    assert 0.05 < head.mean() < 0.6
    return head


def load_folder(name: str) -> Volume:
    return load_volume(read_series(sorted(shared_data(name).glob("*.dcm"))))


@pytest.fixture(scope="session")
def chest_cr() -> Volume:
    """``cr_chest_philips_j2k``: 1955 x 1841 CR, MONOCHROME1, JPEG 2000, Pixel Spacing 0.000."""
    return load_folder("cr_chest_philips_j2k")


@pytest.fixture(scope="session")
def cr_lung_mask(chest_cr: Volume) -> np.ndarray:
    """The lung fields: dark on the displayed radiograph (high values in MONOCHROME1), not touching the image
    border (the air outside the body does), the two largest parts."""
    image = ndimage.uniform_filter(chest_cr.array[0], size=15)
    dark = image > otsu_threshold(image)
    dark = ndimage.binary_opening(dark, iterations=5)
    labelled, count = ndimage.label(dark)
    border = set(np.unique(np.concatenate([labelled[0], labelled[-1], labelled[:, 0], labelled[:, -1]])))
    sizes = ndimage.sum_labels(dark, labelled, index=np.arange(1, count + 1))
    inner = [(size, n) for n, size in enumerate(sizes, start=1) if n not in border]
    keep = [n for _, n in sorted(inner, reverse=True)[:2]]
    lungs = ndimage.binary_fill_holes(np.isin(labelled, keep))
    assert 0.05 < lungs.mean() < 0.5
    return lungs[None]


@pytest.fixture(scope="session")
def us_rgb() -> Volume:
    """``us_ge_logiq700_rgb``: 480 x 640 RGB ultrasound of a lymph node with power Doppler."""
    return load_folder("us_ge_logiq700_rgb")


@pytest.fixture(scope="session")
def lymph_node_mask(us_rgb: Volume) -> np.ndarray:
    """The node: hypoechoic or Doppler-coloured pixels inside the scanned area, closed, the largest part."""
    rgb = us_rgb.array[0].astype(float)
    grey = rgb.mean(axis=2)
    coloured = rgb.max(axis=2) - rgb.min(axis=2) > 60
    scan = np.zeros(grey.shape, bool)
    scan[120:330, 60:600] = True  # the scanned area, below the burned-in header and above the caption
    node = scan & ((ndimage.uniform_filter(grey, 9) < 45) | coloured)
    node = ndimage.binary_opening(ndimage.binary_closing(node, iterations=4), iterations=3)
    node = ndimage.binary_fill_holes(largest_component(node))
    assert 0.02 < node.mean() < 0.3
    return node[None]


@pytest.fixture(scope="session")
def us_palette() -> Volume:
    """``us_philips_cx50_palette``: 600 x 800 PALETTE COLOR obstetric ultrasound (cm regions)."""
    return load_folder("us_philips_cx50_palette")


@pytest.fixture(scope="session")
def sector_mask(us_palette: Volume) -> np.ndarray:
    """The imaged sector: echo above background below the header, closed, the largest part."""
    grey = us_palette.array[0].astype(float).mean(axis=2)
    echo = ndimage.uniform_filter(grey, 7) > 40
    echo[:60] = False  # the burned-in header bar
    sector = ndimage.binary_fill_holes(largest_component(ndimage.binary_closing(echo, iterations=3)))
    assert 0.005 < sector.mean() < 0.3
    return sector[None]


@pytest.fixture(scope="session")
def enhanced_ct() -> Volume:
    """pydicom's ``eCT_Supplemental.dcm``: one Enhanced CT instance, 2 frames stored in reverse position order."""
    return load_volume([pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))])


@pytest.fixture(scope="session")
def whole_slide() -> Volume:
    """``sm_wsi_cmu1_jpeg``: the loader assembles level 1 (1483 x 1110 RGB) from its tiles."""
    return load_folder("sm_wsi_cmu1_jpeg")


@pytest.fixture(scope="session")
def tissue_mask(whole_slide: Volume) -> np.ndarray:
    """Stained tissue: pixels clearly darker than the white glass in some channel, closed, the largest part."""
    stained = (255 - whole_slide.array[0].min(axis=2)) > 40
    tissue = ndimage.binary_fill_holes(largest_component(ndimage.binary_closing(stained, iterations=2)))
    assert 0.05 < tissue.mean() < 0.95
    return tissue[None]


def complete_slide_geometry(dataset: Dataset) -> None:
    """Add to a ``sm_wsi_cmu1_jpeg`` instance the Type 1 slide attributes its converter left out and a tiled
    SEG needs, as a conformant converter writes them; nothing else (the rest dciodvfy reports missing in the
    source is not copied into a SEG, so the SEG does not need it).
    """
    # Microscope Slide Layer Tile Organization, Type 1: where the Total Pixel Matrix lies on the slide; the
    # SEG copies it and places its tiles (Plane Position (Slide)) from it. The slide corner: offsets 0 mm.
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = "0.0"
    origin.YOffsetInSlideCoordinateSystem = "0.0"
    dataset.TotalPixelMatrixOriginSequence = [origin]
    # Optical Path, Type 1 (Number of Optical Paths Type 1C with TILED_FULL): one brightfield path, white
    # light (an illumination colour or wavelength is Type 1C); H&E is imaged that way.
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.BrightfieldIllumination)]
    path.IlluminationColorCodeSequence = [hd.sr.CodedConcept.from_code(codes.cid8122.FullSpectrum)]
    dataset.OpticalPathSequence = [path]
    dataset.NumberOfOpticalPaths = 1
    # Pixel Measures, Slice Thickness Type 1C (required unless Volumetric Properties is SAMPLED or
    # DISTORTED): the SEG copies the Pixel Measures, and highdicom reads no SEG without it. 4 um: a usual
    # H&E section; the source does not say.
    dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness = "0.004"


@pytest.fixture(scope="session")
def completed_slide_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A copy of ``sm_wsi_cmu1_jpeg``, every level completed by ``complete_slide_geometry``."""
    folder = tmp_path_factory.mktemp("sm_wsi_completed")
    paths = []
    for source in sorted(shared_data("sm_wsi_cmu1_jpeg").glob("*.dcm")):
        dataset = pydicom.dcmread(source)
        complete_slide_geometry(dataset)
        paths.append(folder / source.name)
        dataset.save_as(paths[-1])
    return paths


@pytest.fixture(scope="session")
def completed_slide(completed_slide_files: list[Path]) -> Volume:
    """``sm_wsi_cmu1_jpeg`` with the slide geometry a tiled SEG needs, loaded like ``whole_slide``."""
    return load_volume(read_series(completed_slide_files))


@pytest.fixture(scope="session")
def encoding_context() -> EncodingContext:
    return EncodingContext(
        uid_prefix="1.2.826.0.1.3680043.8.498.",
        series_number_base=9000,
        institution_name="Test Hospital",
        node_ae_title="MEDAGENT",
    )


def write_and_read(dataset: Dataset, path: Path) -> Dataset:
    """Write ``dataset`` as a DICOM file at ``path`` and read it back."""
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return pydicom.dcmread(path)


def all_uids(dataset: Dataset, path: str = "") -> dict[str, str]:
    """Every UI value in ``dataset``, nested ones too, keyed by its keyword path."""
    found = {}
    for element in dataset:
        if element.VR == "UI":
            found[path + element.keyword] = str(element.value)
        elif element.VR == "SQ":
            for index, item in enumerate(element.value):
                found.update(all_uids(item, f"{path}{element.keyword}[{index}]."))
    return found


def dciodvfy_output(path: Path) -> str:
    """What dciodvfy prints about the file at ``path`` (it reports on stderr)."""
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return completed.stdout + completed.stderr


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of dciodvfy's report on ``path`` that start with "Error"."""
    return [line for line in dciodvfy_output(path).splitlines() if line.startswith("Error")]


@pytest.fixture
def dciodvfy() -> Callable[[Path], list[str]]:
    """``dciodvfy(path)`` -> its "Error" lines; the test is skipped where dciodvfy is not installed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    return dciodvfy_errors
