"""The SCP against real senders: DCMTK echoscu/storescu and pynetdicom on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.helpers.peers import run_dcmtk, shared_data, wait_until

pytestmark = pytest.mark.integration


def test_echoscu_succeeds_and_unknown_calling_ae_is_rejected(scp) -> None:
    ok = run_dcmtk("echoscu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(scp.port))
    assert ok.returncode == 0, ok.stderr
    rejected = run_dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "MEDAGENT", "127.0.0.1", str(scp.port))
    assert rejected.returncode != 0
    assert "Association Rejected" in rejected.stderr + rejected.stdout

    def audit():  # the SCP records the release in its own thread, just after echoscu exits
        rows = scp.index.query("SELECT * FROM associations")
        return {row["calling_ae_title"]: row["outcome"] for row in rows if row["outcome"] != "open"}

    assert wait_until(lambda: len(audit()) == 2, timeout=5, what="the audit log") and audit() == {
        "STORESCU": "released",
        "INTRUDER": "rejected",
    }


def _without_group_lengths(dataset: Dataset) -> list:
    return [element for element in dataset if element.tag.element != 0]


def test_storescu_series_is_spooled_and_indexed_before_success(scp) -> None:
    files = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))[:10]
    sent = run_dcmtk(
        "storescu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(scp.port), *map(str, files)
    )
    assert sent.returncode == 0, sent.stderr
    rows = scp.index.query("SELECT * FROM instances")
    assert len(rows) == 10
    for path in files:
        original = pydicom.dcmread(path)
        row = next(r for r in rows if r["sop_instance_uid"] == original.SOPInstanceUID)
        spooled = pydicom.dcmread(row["path"])
        assert Path(row["path"]).name == f"{original.SOPInstanceUID}.dcm"
        # data set equal element by element; the file meta and retired group lengths are the sender's own
        assert _without_group_lengths(spooled) == _without_group_lengths(original)
        assert row["modality"] == "CT" and "PatientName" not in row["attributes"]
    assert not list(Path(rows[0]["path"]).parent.glob("*.part"))
    studies = scp.index.query("SELECT * FROM studies")
    assert len(studies) == 1 and studies[0]["state"] == "receiving"
    assert scp.index.query("SELECT instances FROM associations")[0]["instances"] == 10


def _store(port: int, dataset: Dataset) -> int:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDAGENT")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status)
    finally:
        assoc.release()


def test_invalid_uid_is_refused_with_c210_and_quarantined(scp) -> None:
    dataset = pydicom.dcmread(sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))[0])
    dataset.StudyInstanceUID = "1.2.3.abc"
    assert _store(scp.port, dataset) == 0xC210
    reasons = list(scp.spool.quarantine_root.glob("*.reason.txt"))
    assert len(reasons) == 1 and "StudyInstanceUID" in reasons[0].read_text()
    assert scp.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0


def test_unwritable_spool_answers_out_of_resources_and_indexes_nothing(scp) -> None:
    if os.geteuid() == 0:
        # root ignores permissions: make the study folder a file so the spool write fails for real
        dataset = pydicom.dcmread(sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))[0])
        (scp.spool.root / dataset.StudyInstanceUID).write_text("not a folder")
    else:
        dataset = pydicom.dcmread(sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))[0])
        scp.spool.root.chmod(0o500)
    try:
        assert _store(scp.port, dataset) == 0xA700
    finally:
        scp.spool.root.chmod(0o750)
    assert scp.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    (scp.spool.root / dataset.StudyInstanceUID).unlink(missing_ok=True)
    assert _store(scp.port, dataset) == 0x0000  # the sender's retry succeeds once the disk is back
