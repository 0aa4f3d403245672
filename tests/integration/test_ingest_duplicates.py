"""Resent instances: an identical copy is acknowledged and changes nothing; new content becomes a version."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage

from dicom_node.index import Index
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.conftest import node_settings
from tests.helpers.ingest import data_set_elements, open_association, with_new_uids
from tests.helpers.peers import shared_data, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def scp(tmp_path: Path):
    settings = node_settings(tmp_path / "node").with_absolute_storage()
    server = StorageSCP(settings, Index(tmp_path / "node" / "index.sqlite3"), Spool(tmp_path / "node"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _send(port: int, dataset, syntax: str = ImplicitVRLittleEndian) -> int:
    assoc = open_association(port, [(CTImageStorage, [syntax])])
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


def test_identical_resend_changes_nothing_and_new_content_is_kept_as_a_version(scp, caplog) -> None:
    original = with_new_uids(pydicom.dcmread(shared_data("ct_chest_lidc0314") / "000004.dcm"), "duplicates")
    uid = original.SOPInstanceUID
    assert _send(scp.port, original) == 0x0000
    first = dict(scp.index.instance(uid))
    path = Path(first["path"])
    assert first["versions"] == 1 and len(first["content_hash"]) == 64
    # the study has completed in the meantime (as the tracker would mark it)
    scp.index.query(
        "UPDATE studies SET state='complete' WHERE study_instance_uid=?", (original.StudyInstanceUID,)
    )
    study = dict(scp.index.study(original.StudyInstanceUID))

    time.sleep(0.05)
    assert _send(scp.port, original) == 0x0000  # the same bytes again
    assert _send(scp.port, original, ExplicitVRLittleEndian) == 0x0000  # the same data set, another syntax
    assert dict(scp.index.instance(uid)) == first  # not re-indexed: same received_at, association, version
    assert dict(scp.index.study(original.StudyInstanceUID)) == study  # not re-opened: no second job
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]

    def audit() -> list[tuple]:
        rows = scp.index.query("SELECT * FROM associations ORDER BY started_at")
        return [(r["outcome"], r["instances"], r["duplicates"], r["failed"]) for r in rows]

    wait_until(lambda: all(row[0] == "released" for row in audit()), timeout=5, what="the audit log")
    assert audit() == [("released", 1, 0, 0), ("released", 0, 1, 0), ("released", 0, 1, 0)]

    corrected = copy.deepcopy(original)
    corrected.SeriesDescription = "corrected by the modality"
    with caplog.at_level(logging.WARNING, logger="dicom_node.scp"):
        assert _send(scp.port, corrected) == 0x0000
    second = scp.index.instance(uid)
    assert second["versions"] == 2 and second["content_hash"] != first["content_hash"]
    assert second["received_at"] > first["received_at"] and second["path"] == first["path"]
    kept = path.with_name(f"{uid}.v1.dcm")
    assert data_set_elements(pydicom.dcmread(kept)) == data_set_elements(original)
    assert pydicom.dcmread(path).SeriesDescription == "corrected by the modality"
    assert f"instance {uid} received again with different content" in caplog.text
    assert scp.index.study(original.StudyInstanceUID)["state"] == "receiving"  # new content: re-opened

    # the first content sent once more is a third version; no version file is ever overwritten
    assert _send(scp.port, original) == 0x0000
    assert scp.index.instance(uid)["versions"] == 3
    assert pydicom.dcmread(path.with_name(f"{uid}.v2.dcm")).SeriesDescription == "corrected by the modality"
    assert data_set_elements(pydicom.dcmread(kept)) == data_set_elements(original)
    assert data_set_elements(pydicom.dcmread(path)) == data_set_elements(original)
    assert scp.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 1
    assert not list(path.parent.glob("*.part"))


def test_an_instance_indexed_but_missing_on_disk_is_written_again(scp) -> None:
    dataset = with_new_uids(pydicom.dcmread(shared_data("ct_chest_lidc0314") / "000008.dcm"), "missing")
    assert _send(scp.port, dataset) == 0x0000
    path = Path(scp.index.instance(dataset.SOPInstanceUID)["path"])
    path.unlink()
    assert _send(scp.port, dataset) == 0x0000
    assert data_set_elements(pydicom.dcmread(path)) == data_set_elements(dataset)
