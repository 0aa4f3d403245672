import pytest

from dicom_node.load import load_volume, read_series
from tests.helpers.peers import shared_data


@pytest.fixture(scope="session")
def chest_ct():
    return load_volume(read_series(sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))))


@pytest.fixture(scope="session")
def chest_cr():
    """The Philips CR chest radiograph: PA, MONOCHROME1 (``array`` keeps the stored polarity), 1955x1841."""
    return load_volume(read_series(sorted(shared_data("cr_chest_philips_j2k").glob("*.dcm"))))
