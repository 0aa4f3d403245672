"""Simultaneous associations: 16 senders at once, and a transient rejection beyond node.max_associations."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage

from dicom_node.index import Index
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.conftest import node_settings
from tests.helpers.ingest import ct_series, new_uid, open_association
from tests.helpers.peers import run_dcmtk, wait_until

pytestmark = pytest.mark.integration


def _scp(storage: Path, **node) -> StorageSCP:
    settings = node_settings(storage, node=node).with_absolute_storage()
    server = StorageSCP(settings, Index(storage / "index.sqlite3"), Spool(storage))
    server.start()
    return server


def test_sixteen_simultaneous_associations_each_store_their_instances(tmp_path: Path) -> None:
    server = _scp(tmp_path / "node")
    assert server.settings.node.max_associations == 16
    senders, per_sender = 16, 4
    study = new_uid("concurrent study")
    series = {
        n: ct_series(per_sender, study, new_uid("concurrent series", n), f"concurrent {n}")
        for n in range(senders)
    }
    all_established = threading.Barrier(senders, timeout=30)
    active: list[int] = []
    statuses: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def send(number: int) -> None:
        try:
            assoc = open_association(server.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
            try:
                if all_established.wait() == 0:
                    active.append(len([a for a in server.ae.active_associations if a.is_acceptor]))
                statuses[number] = [int(assoc.send_c_store(ds).Status) for ds in series[number]]
            finally:
                assoc.release()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        server.stop()
    assert not errors, errors
    assert active == [senders]  # all sixteen were open at the same moment
    assert statuses == {n: [0] * per_sender for n in range(senders)}
    index = server.index
    assert (
        index.query("SELECT COUNT(*) AS n FROM instances WHERE study_instance_uid=?", (study,))[0]["n"] == 64
    )
    audit = index.query("SELECT outcome, instances FROM associations")
    assert sorted(tuple(row) for row in audit) == [("released", per_sender)] * senders


def test_an_association_beyond_the_limit_is_rejected_transiently(tmp_path: Path) -> None:
    server = _scp(tmp_path / "node", max_associations=2)
    held = [open_association(server.port, [(CTImageStorage, [ExplicitVRLittleEndian])]) for _ in range(2)]
    try:
        echo = run_dcmtk("echoscu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(server.port))
        output = echo.stdout + echo.stderr
        assert echo.returncode != 0
        assert "Rejected Transient" in output and "Local Limit Exceeded" in output, output

        from pynetdicom import AE

        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage)
        rejected = ae.associate("127.0.0.1", server.port, ae_title="MEDAGENT")
        assert rejected.is_rejected
        answer = rejected.acceptor.primitive
        # rejected-transient (2), service-provider presentation related (3), local-limit-exceeded (2)
        assert (answer.result, answer.result_source, answer.diagnostic) == (2, 3, 2)

        held.pop().release()  # a transient rejection: once an association ends, the sender gets in
        wait_until(
            lambda: len([a for a in server.ae.active_associations if a.is_acceptor]) < 2,
            timeout=5,
            what="the released association to end",
        )
        again = open_association(server.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
        small = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        assert again.send_c_store(small).Status == 0x0000
        again.release()
    finally:
        for assoc in held:
            assoc.release()
        server.stop()
    rows = wait_until(
        lambda: [r for r in server.index.query("SELECT * FROM associations") if r["outcome"] == "rejected"],
        timeout=5,
        what="the rejected associations in the audit log",
    )
    assert len(rows) == 2 and all("node.max_associations = 2" in row["detail"] for row in rows)
