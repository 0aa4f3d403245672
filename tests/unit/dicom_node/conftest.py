"""Fixtures for the encoder tests: the real chest CT (loaded once), its lung masks, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

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
def encoding_context() -> EncodingContext:
    return EncodingContext(
        uid_prefix="1.2.826.0.1.3680043.8.498.",
        series_number_base=9000,
        institution_name="Test Hospital",
        node_ae_title="MEDAGENT",
    )


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
