"""Bad input over a real association: its own status, quarantine with a reason, nothing else disturbed.

Each malformed object is answered with a failure status and an Error Comment, kept in quarantine/ with a
.reason.txt (or, refused by policy, only the reason is recorded), and the next good instance on the same
association is stored. Also: a full disk (a real tmpfs), the size limit, and the association audit.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from dicom_node.index import Index
from tests.helpers.ingest import encoded, open_association, raw_c_store, with_new_uids
from tests.helpers.peers import run_dcmtk, shared_data, wait_until
from tests.integration.conftest import start_scp

pytestmark = pytest.mark.integration

CANNOT_UNDERSTAND, DOES_NOT_MATCH = 0xC210, 0xA900


def _ct(name: str) -> Dataset:
    return with_new_uids(pydicom.dcmread(shared_data("ct_chest_lidc0314") / "000004.dcm"), name)


def _changed(name: str, **changes) -> Dataset:
    dataset = _ct(name)
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    return dataset


def _bad_inputs() -> list[tuple[str, str, bytes, int, str]]:
    """``(case, command SOP Instance UID, data set bytes, expected status, words of the Error Comment)``."""
    implicit = ImplicitVRLittleEndian
    good = _ct("template")
    whole = encoded(good, implicit)
    meta = BytesIO()
    write_file_meta_info(meta, good.file_meta)
    short = _ct("short-pixels")
    short.Rows = 1024  # the pixel data is complete but holds half of what Rows x Columns needs
    at = whole.index(b"\xe0\x7f\x10\x00") + 4  # the length of Pixel Data, 1000 bytes too long
    longer = (
        whole[:at]
        + (int.from_bytes(whole[at : at + 4], "little") + 1000).to_bytes(4, "little")
        + whole[at + 4 :]
    )
    cases = [
        ("garbage", good.SOPInstanceUID, random.Random(7).randbytes(3000), CANNOT_UNDERSTAND, ""),
        ("a file sent as the data set", good.SOPInstanceUID, b"\0" * 128 + b"DICM" + meta.getvalue() + whole,
         CANNOT_UNDERSTAND, "File Meta or command element"),
        ("file meta in the data set", good.SOPInstanceUID, meta.getvalue() + whole, CANNOT_UNDERSTAND, "File Meta"),
        ("truncated in the pixel data", good.SOPInstanceUID, whole[: len(whole) - 1000], CANNOT_UNDERSTAND, "truncated"),
        ("truncated in the header", good.SOPInstanceUID, whole[:301], CANNOT_UNDERSTAND, "truncated"),
        ("a corrupted Specific Character Set", good.SOPInstanceUID, whole[:8] + b"\xff\xff\x00\x00" + whole[12:],
         CANNOT_UNDERSTAND, "undecodable value"),
        ("Pixel Data longer than the data", good.SOPInstanceUID, longer, CANNOT_UNDERSTAND,
         "truncated: element (7FE0,0010)"),
    ]  # fmt: skip
    for case, dataset, status, words in (
        ("empty StudyInstanceUID", _changed("empty-study", StudyInstanceUID=""), CANNOT_UNDERSTAND, "StudyInstanceUID"),
        ("malformed SeriesInstanceUID", _changed("bad-series", SeriesInstanceUID="1.2.840.abc"), CANNOT_UNDERSTAND,
         "SeriesInstanceUID"),
        ("no SOPInstanceUID in the data set", _changed("no-sop", SOPInstanceUID=None), CANNOT_UNDERSTAND,
         "SOPInstanceUID"),
        ("missing PixelData in an image SOP class", _changed("no-pixels", PixelData=None), DOES_NOT_MATCH,
         "no Pixel Data"),
        ("native pixel data shorter than its rows", short, CANNOT_UNDERSTAND, "truncated Pixel Data"),
    ):  # fmt: skip
        command_uid = dataset.get("SOPInstanceUID") or good.SOPInstanceUID
        cases.append((case, str(command_uid), encoded(dataset, implicit), status, words))
    mismatch = _ct("mismatch")
    cases.append(("SOP Instance UID of the command and the data set differ", good.SOPInstanceUID,
                  encoded(mismatch, implicit), DOES_NOT_MATCH, "SOPInstanceUID differs"))  # fmt: skip
    mr = _changed("mr-in-ct", SOPClassUID=MRImageStorage)
    cases.append(("SOP Class of the command and the data set differ", mr.SOPInstanceUID, encoded(mr, implicit),
                  DOES_NOT_MATCH, "SOPClassUID differs"))  # fmt: skip
    return cases


def test_bad_input_gets_its_status_is_quarantined_and_the_association_goes_on(scp) -> None:
    cases = _bad_inputs()
    explicit = encoded(_ct("explicit"), ExplicitVRLittleEndian)
    at = explicit.index(b"UI", 0, 200)  # corrupt the first explicit VR
    bad_vr = explicit[:at] + b"\x01Q" + explicit[at + 2 :]
    good = _ct("good after the bad ones")
    assoc = open_association(
        scp.port, [(CTImageStorage, [ImplicitVRLittleEndian]), (CTImageStorage, [ExplicitVRLittleEndian])]
    )
    answers = {}
    try:
        for case, sop_instance_uid, data, _, _ in cases:
            answers[case] = raw_c_store(
                assoc, CTImageStorage, sop_instance_uid, data, None, ImplicitVRLittleEndian
            )
        answers["unknown VR"] = raw_c_store(
            assoc, CTImageStorage, good.SOPInstanceUID, bad_vr, None, ExplicitVRLittleEndian
        )
        assert assoc.is_established, "the node dropped the association"
        assert assoc.send_c_store(good).Status == 0x0000
    finally:
        assoc.release()

    expected = {case: (status, words) for case, _, _, status, words in cases}
    expected["unknown VR"] = (CANNOT_UNDERSTAND, "unknown VR")
    for case, (status, words) in expected.items():
        got_status, comment = answers[case]
        assert got_status == status, f"{case}: 0x{got_status:04X} {comment}"
        assert words in (comment or ""), f"{case}: {comment!r}"
        assert len(comment) <= 64

    # every refused object is in quarantine with its reason; only the good one is indexed
    reasons = sorted(scp.spool.quarantine_root.glob("*.reason.txt"))
    objects = sorted(scp.spool.quarantine_root.glob("*.dcm"))
    assert len(reasons) == len(objects) == len(expected)
    texts = [path.read_text() for path in reasons]
    for status, words in expected.values():
        assert any(f"status: 0x{status:04X}" in text and words in text for text in texts), words
    assert all("calling_ae_title: STORESCU" in text for text in texts)
    assert [row["sop_instance_uid"] for row in scp.index.query("SELECT * FROM instances")] == [
        good.SOPInstanceUID
    ]
    assert [row["study_instance_uid"] for row in scp.index.query("SELECT * FROM studies")] == [
        good.StudyInstanceUID
    ]
    assert not list(scp.spool.root.rglob("*.part")) and not list(scp.spool.incoming.iterdir())
    for path in objects:  # each kept as a DICOM file: the node's file meta, then the data set as received
        assert pydicom.filereader.read_file_meta_info(path).SourceApplicationEntityTitle == "STORESCU"

    def audit():
        row = scp.index.query("SELECT * FROM associations")[0]
        return row if row["outcome"] != "open" else None

    row = wait_until(audit, timeout=5, what="the audit log")
    assert (row["outcome"], row["instances"], row["failed"]) == ("released", 1, len(expected))


def test_a_data_set_over_max_dataset_bytes_is_refused_with_a701_and_not_kept(tmp_path: Path) -> None:
    server = start_scp(tmp_path / "node", max_dataset_bytes=100_000)
    try:
        large = _ct("large")  # 512 x 512 x 2 bytes
        small = with_new_uids(pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")), "small")
        assoc = open_association(
            server.port, [(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])]
        )
        try:
            refused = assoc.send_c_store(large)
            assert refused.Status == 0xA701 and "max_dataset_bytes" in refused.ErrorComment
            assert assoc.send_c_store(small).Status == 0x0000
        finally:
            assoc.release()
        assert server.index.instance(large.SOPInstanceUID) is None
        assert not list(server.spool.quarantine_root.glob("*.dcm"))  # refused, not kept
        (reason,) = server.spool.quarantine_root.glob("*.reason.txt")
        assert (
            "status: 0xA701" in reason.read_text() and "node.max_dataset_bytes (100000)" in reason.read_text()
        )
    finally:
        server.stop()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    completed = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    return completed.returncode == 0


def test_a_full_disk_answers_a700_leaves_nothing_behind_and_the_retry_succeeds(scp, monkeypatch) -> None:
    slices = [_ct(f"disk-full-{n}") for n in range(3)]  # about 526 kB each in the spool
    spool = scp.spool.root
    mounted = os.geteuid() == 0 and _mount_tmpfs(spool, "1300k")
    try:
        if not mounted:  # no permission to mount: the third write fails as a full disk would
            real_writev = os.writev
            budget = {"left": 2 * 530_000}

            def writev(descriptor: int, buffers) -> int:
                budget["left"] -= sum(len(buffer) for buffer in buffers)
                if budget["left"] < 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_writev(descriptor, buffers)

            monkeypatch.setattr("dicom_node.spool.os.writev", writev)
        assoc = open_association(scp.port, [(CTImageStorage, [ImplicitVRLittleEndian])])
        try:
            statuses = [assoc.send_c_store(dataset) for dataset in slices]
            assert [s.Status for s in statuses] == [0x0000, 0x0000, 0xA700]
            assert "No space left" in statuses[2].ErrorComment
            assert scp.index.instance(slices[2].SOPInstanceUID) is None
            assert not list(spool.rglob("*.part")) and not list(scp.spool.quarantine_root.iterdir())
            assert not list(scp.spool.incoming.iterdir())
            if mounted:
                subprocess.run(["mount", "-o", "remount,size=4m", str(spool)], check=True)
            else:
                monkeypatch.undo()
            assert assoc.send_c_store(slices[2]).Status == 0x0000  # the sender's retry, once there is room
        finally:
            assoc.release()
        for dataset in slices:
            row = scp.index.instance(dataset.SOPInstanceUID)
            assert pydicom.dcmread(row["path"]).SOPInstanceUID == dataset.SOPInstanceUID
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(spool)], check=False)


def test_a_staged_file_that_cannot_be_created_answers_a700_and_the_next_instance_is_stored(
    scp, monkeypatch
) -> None:
    """The staged file is opened before the checks start; a failure there is answered like a full disk."""
    slices = [_ct(f"no-file-{n}") for n in range(2)]
    real_open = os.open
    failures = {"left": 1}

    def open_or_fail(path, flags, *arguments) -> int:
        if str(path).endswith(".part") and failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, *arguments)

    monkeypatch.setattr("dicom_node.spool.os.open", open_or_fail)
    assoc = open_association(scp.port, [(CTImageStorage, [ImplicitVRLittleEndian])])
    try:
        statuses = [assoc.send_c_store(dataset) for dataset in slices]
    finally:
        assoc.release()
    assert [s.Status for s in statuses] == [0xA700, 0x0000]
    assert "Too many open files" in statuses[0].ErrorComment
    assert scp.index.instance(slices[0].SOPInstanceUID) is None
    assert pydicom.dcmread(scp.index.instance(slices[1].SOPInstanceUID)["path"]).SOPInstanceUID == (
        slices[1].SOPInstanceUID
    )
    assert not list(scp.spool.incoming.iterdir()) and not list(scp.spool.root.rglob("*.part"))


def test_an_aborted_association_is_audited_with_what_it_stored(scp) -> None:
    slices = [_ct(f"aborted-{n}") for n in range(2)]
    assoc = open_association(scp.port, [(CTImageStorage, [ImplicitVRLittleEndian])])
    assert [assoc.send_c_store(dataset).Status for dataset in slices] == [0, 0]
    assoc.abort()

    def ended():
        rows = scp.index.query("SELECT * FROM associations WHERE outcome != 'open'")
        return rows[0] if rows else None

    row = wait_until(ended, timeout=5, what="the aborted association in the audit log")
    assert (row["calling_ae_title"], row["outcome"], row["instances"]) == ("STORESCU", "aborted", 2)
    assert row["ended_at"] >= row["started_at"] and row["address"].startswith("127.0.0.1:")
    assert "A-ABORT" in row["detail"]
    # both instances acknowledged before the abort are kept
    assert all(scp.index.instance(dataset.SOPInstanceUID) for dataset in slices)


def test_associations_left_open_by_a_stopped_node_are_marked_interrupted(tmp_path: Path) -> None:
    index = Index(tmp_path / "node" / "index.sqlite3")
    index.open_association("left-open", "STORESCU", "MEDAGENT", "127.0.0.1:1234")
    server = start_scp(tmp_path / "node")
    server.stop()
    row = index.query("SELECT * FROM associations WHERE association_id='left-open'")[0]
    assert row["outcome"] == "interrupted" and row["ended_at"] is not None


def test_a_file_without_file_meta_sent_by_storescu_is_stored_with_the_nodes_meta(scp, tmp_path: Path) -> None:
    dataset = _ct("no file meta")
    complete = tmp_path / "with-meta.dcm"
    dataset.save_as(complete)
    bare = tmp_path / "bare.dcm"  # the data set alone, as some archives keep their files
    completed = subprocess.run(["dcmconv", "-F", str(complete), str(bare)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert bare.read_bytes()[128:132] != b"DICM"
    sent = run_dcmtk(
        "storescu", "-f", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(scp.port), str(bare)
    )
    assert sent.returncode == 0, sent.stderr
    stored = pydicom.dcmread(scp.index.instance(dataset.SOPInstanceUID)["path"])
    assert stored.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
    assert stored.PixelData == dataset.PixelData
