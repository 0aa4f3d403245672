"""Ingest of every storage SOP class and transfer syntax, from DCMTK storescu, pynetdicom and Orthanc.

Each object must be stored in the transfer syntax it was sent in, data-set-equal to what was sent (file
meta and group lengths aside), and its pixels must decode with the plugins the node installs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from dicom_node.index import Index
from dicom_node.scp import SOP_CLASS_NOT_SUPPORTED
from tests.helpers.ingest import (
    STORESCU_PROPOSE,
    data_set_bytes,
    data_set_elements,
    open_association,
    pixels_close,
    raw_c_store,
    transcoded_files,
    with_new_uids,
)
from tests.helpers.peers import DATA, run_dcmtk, shared_data
from tests.integration.conftest import start_scp

pytestmark = pytest.mark.integration

LOSSY = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
}
LOSSY.add("1.2.840.10008.1.2.4.203")


@pytest.fixture(scope="module")
def transcoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return transcoded_files(tmp_path_factory.mktemp("transcoded"))


def _shared_files() -> list[Path]:
    files = sorted(DATA.glob("*/*.dcm")) or sorted(shared_data("ct_chest_lidc0314").parent.glob("*/*.dcm"))
    assert len(files) >= 100
    return files


def _storescu(port: int, files: list[Path]) -> None:
    """Send each file with storescu, proposing its own transfer syntax (``-R``: only what the files need)."""
    by_syntax: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        by_syntax[str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)].append(
            path
        )
    for syntax, group in by_syntax.items():
        sent = run_dcmtk(
            "storescu", "-R", STORESCU_PROPOSE[syntax], "-aet", "STORESCU", "-aec", "MEDAGENT",
            "127.0.0.1", str(port), *map(str, group),
        )  # fmt: skip
        assert sent.returncode == 0, f"{UID(syntax).name}: {sent.stderr[-2000:]}"


def _assert_stored_as_sent(index: Index, path: Path, decode: bool = True):
    original = pydicom.dcmread(path)
    row = index.instance(original.SOPInstanceUID)
    assert row is not None, f"{path.name} was not indexed"
    assert row["transfer_syntax_uid"] == original.file_meta.TransferSyntaxUID, path.name
    stored = pydicom.dcmread(row["path"])
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert data_set_elements(stored) == data_set_elements(original), path.name
    if decode:
        assert stored.pixel_array.size > 0, path.name
    return stored


def test_every_shared_file_and_every_storescu_syntax_is_stored_as_sent_and_decodes(scp, transcoded) -> None:
    shared = _shared_files()
    by_storescu = [p for uid, p in transcoded.items() if uid in STORESCU_PROPOSE]
    _storescu(scp.port, shared + by_storescu)

    for path in shared:
        _assert_stored_as_sent(scp.index, path)
    assert {row["transfer_syntax_uid"] for row in scp.index.query("SELECT * FROM instances")} >= {
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    }  # fmt: skip

    # the same MR slice in five syntaxes decodes to the same pixels as the explicit VR little endian one
    five = shared_data("ts_mr_siemens_trio_5ts")
    reference = pydicom.dcmread(five / "1.dcm").pixel_array
    for name in ("4.dcm", "5.dcm", "7.dcm", "9.dcm"):
        stored = pydicom.dcmread(scp.index.instance(pydicom.dcmread(five / name).SOPInstanceUID)["path"])
        assert (stored.pixel_array == reference).all(), name

    # the transcoded slices: stored as sent, and their pixels are those of the source slice
    us = pydicom.dcmread(shared_data("us_ge_logiq700_rgb") / "US1_UNCR.dcm").pixel_array
    for path in by_storescu:
        stored = _assert_stored_as_sent(scp.index, path)
        syntax = str(stored.file_meta.TransferSyntaxUID)
        expected = us if syntax == "1.2.840.10008.1.2.4.50" else reference  # pydicom decodes YBR to RGB
        assert pixels_close(stored.pixel_array, expected, syntax not in LOSSY), UID(syntax).name


def test_htj2k_and_jpeg_lossless_process_14_from_pynetdicom_are_stored_and_decode(scp, transcoded) -> None:
    reference = pydicom.dcmread(shared_data("ts_mr_siemens_trio_5ts") / "1.dcm").pixel_array
    for syntax in ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"):
        assoc = open_association(scp.port, [(MRImageStorage, [syntax])])
        try:
            assert assoc.send_c_store(transcoded[syntax]).Status == 0x0000
        finally:
            assoc.release()
        stored = _assert_stored_as_sent(scp.index, transcoded[syntax])
        assert pixels_close(stored.pixel_array, reference, syntax not in LOSSY), UID(syntax).name


def test_orthanc_pushes_every_shared_file_to_the_node_unchanged(scp, orthanc, transcoded) -> None:
    files = _shared_files() + [transcoded["1.2.840.10008.1.2.4.81"], transcoded["1.2.840.10008.1.2.4.51"]]
    identifiers = [orthanc.upload(path)["ID"] for path in files]
    orthanc.add_modality("medagent", "MEDAGENT", scp.port)
    answer = orthanc.request(
        "POST", "/modalities/medagent/store", {"Resources": identifiers, "Synchronous": True}, timeout=300
    )
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    for path in files:
        _assert_stored_as_sent(scp.index, path, decode=False)  # the storescu test decodes the same bytes
    assert scp.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == len(files)


def test_a_private_sop_class_is_accepted_from_storescu(scp, tmp_path: Path) -> None:
    dataset = with_new_uids(pydicom.dcmread(shared_data("ct_chest_lidc0314") / "000004.dcm"), "private")
    private = "1.3.6.1.4.1.5962.301.9.1"  # a vendor's private storage SOP class
    dataset.SOPClassUID = private
    dataset.file_meta.MediaStorageSOPClassUID = private
    path = tmp_path / "private.dcm"
    dataset.save_as(path)
    # storescu sends a SOP class it does not know only from a configuration profile that names it
    profile = tmp_path / "storescu.cfg"
    profile.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = 1.2.840.10008.1.2\n"
        f"[[PresentationContexts]]\n[Private]\nPresentationContext1 = {private}\\Uncompressed\n"
        "[[Profiles]]\n[Private]\nPresentationContexts = Private\n"
    )
    sent = run_dcmtk(
        "storescu", "-xf", str(profile), "Private", "-aet", "STORESCU", "-aec", "MEDAGENT",
        "127.0.0.1", str(scp.port), str(path),
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    row = scp.index.instance(dataset.SOPInstanceUID)
    assert row["sop_class_uid"] == private
    assert data_set_elements(pydicom.dcmread(row["path"])) == data_set_elements(pydicom.dcmread(path))


def test_restricted_sop_classes_are_refused_at_association_and_by_status(tmp_path: Path) -> None:
    server = start_scp(tmp_path / "node", restrict_sop_classes=[str(CTImageStorage)])
    try:
        mr = shared_data("mr_brain_t1_sag_siemens")
        ct = shared_data("ct_chest_lidc0314")
        mr_file = sorted(mr.glob("*.dcm"))[0]
        ct_file = sorted(ct.glob("*.dcm"))[0]
        # DCMTK: the MR presentation context is rejected, so storescu has nothing to send it on
        sent = run_dcmtk(
            "storescu", "-R", "-nh", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(server.port),
            str(mr_file), str(ct_file),
        )  # fmt: skip
        assert "no presentation context" in (sent.stdout + sent.stderr).lower()
        assert server.index.instance(pydicom.dcmread(ct_file).SOPInstanceUID) is not None
        assert server.index.instance(pydicom.dcmread(mr_file).SOPInstanceUID) is None

        assoc = open_association(
            server.port, [(CTImageStorage, ["1.2.840.10008.1.2"]), (MRImageStorage, ["1.2.840.10008.1.2"])]
        )
        try:
            assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
            assert [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts] == [
                (MRImageStorage, 0x03)
            ]
            # a C-STORE of MR sent on the CT context anyway: 0x0122, SOP class not supported
            meta, data = data_set_bytes(mr_file)
            status, comment = raw_c_store(
                assoc,
                MRImageStorage,
                meta.MediaStorageSOPInstanceUID,
                data,
                context_sop_class_uid=CTImageStorage,
            )
        finally:
            assoc.release()
        assert status == SOP_CLASS_NOT_SUPPORTED and "restrict_sop_classes" in comment
        assert server.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 1
    finally:
        server.stop()
