"""The outbox against DCMTK storescp: retries with backoff while the destination is down, then delivers."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node.index import Index
from dicom_node.outbox import Outbox
from tests.conftest import node_settings
from tests.helpers.peers import PEER_ENVIRONMENT, free_port, run_dcmtk, wait_until
from tests.helpers.peers import shared_data as shared_data_folder

pytestmark = pytest.mark.integration


def _storescp(folder: Path, port: int, ae_title: str = "PACS") -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-aet", ae_title, "-od", str(folder), "+xa", str(port)],
        env=PEER_ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: run_dcmtk("echoscu", "-aec", ae_title, "127.0.0.1", str(port), timeout=10).returncode == 0,
        timeout=15,
        what="storescp",
    )
    return process


def _queue_object(index: Index, tmp_path: Path, destinations: list[str]) -> str:
    source = Path(get_testdata_file("CT_small.dcm"))
    path = tmp_path / "outputs" / "object.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    uid = str(pydicom.dcmread(path).SOPInstanceUID)
    index.record_output(
        sop_instance_uid=uid,
        job_id="job",
        kind="SC",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        path=str(path),
        destinations=destinations,
    )
    return uid


def test_down_destination_is_retried_with_backoff_then_delivered(tmp_path: Path) -> None:
    down_port, up_port = free_port(), free_port()
    settings = node_settings(
        tmp_path / "node",
        destinations=[
            {"name": "down", "ae_title": "PACS", "host": "127.0.0.1", "port": down_port},
            {"name": "up", "ae_title": "PACS", "host": "127.0.0.1", "port": up_port},
        ],
        delivery={"retry_initial_seconds": 10, "retry_max_seconds": 40, "timeout_seconds": 5},
    )
    index = Index(tmp_path / "index.sqlite3")
    outbox = Outbox(settings, index)
    uid = _queue_object(index, tmp_path, ["down", "up"])
    up = _storescp(tmp_path / "up", up_port)
    try:
        start = time.time()
        assert outbox.deliver_due(start) == 1  # the live destination is not held up by the dead one
        rows = {r["destination"]: r for r in index.deliveries(uid)}
        assert rows["up"]["state"] == "delivered"
        assert rows["down"]["state"] == "pending" and rows["down"]["attempts"] == 1
        assert "no association" in rows["down"]["last_error"]
        waits = []
        for _ in range(4):
            row = index.deliveries(uid)[0]
            waits.append(round(row["next_attempt_at"] - start))
            assert outbox.deliver_due(row["next_attempt_at"] - 1) == 0  # not due yet: nothing is tried
            start = row["next_attempt_at"]
            assert outbox.deliver_due(start) == 0
        assert waits == [10, 20, 40, 40]  # doubling, capped at retry_max_seconds
        assert index.deliveries(uid)[0]["state"] == "pending"
    finally:
        up.terminate()
        up.wait()
    down = _storescp(tmp_path / "down", down_port)
    try:
        assert outbox.deliver_due(time.time() + 3600) == 1
    finally:
        down.terminate()
        down.wait()
    row = next(r for r in index.deliveries(uid) if r["destination"] == "down")
    assert row["state"] == "delivered" and row["attempts"] == 6
    received = list((tmp_path / "down").glob("*"))
    assert len(received) == 1 and pydicom.dcmread(received[0]).SOPInstanceUID == uid


def test_delivery_becomes_a_dead_letter_after_the_give_up_time_and_is_kept(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path / "node",
        destinations=[{"name": "down", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
        delivery={"retry_initial_seconds": 1, "give_up_after_hours": 1},
    )
    index = Index(tmp_path / "index.sqlite3")
    outbox = Outbox(settings, index)
    uid = _queue_object(index, tmp_path, ["down"])
    now = time.time()
    outbox.deliver_due(now)
    assert index.deliveries(uid)[0]["state"] == "pending"
    outbox.deliver_due(now + 3601)
    row = index.deliveries(uid)[0]
    assert row["state"] == "dead" and row["attempts"] == 2
    assert Path(index.outputs()[0]["path"]).exists()


class RecordingPACS:
    """A pynetdicom Storage SCP that accepts only some SOP classes and transfer syntaxes and records all."""

    def __init__(self, sop_classes: list[str], transfer_syntaxes: list[str]) -> None:
        from pynetdicom import AE, evt

        self.received: list[tuple[str, str, pydicom.Dataset]] = []
        self.ae = AE(ae_title="PACS")
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class, transfer_syntaxes)
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received.append((str(dataset.SOPInstanceUID), str(event.context.transfer_syntax), dataset))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def test_object_of_a_refused_sop_class_goes_to_dead_letter_while_the_others_arrive(tmp_path: Path) -> None:
    from pydicom.uid import ExplicitVRLittleEndian

    ct_class, mr_class = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    pacs = RecordingPACS([ct_class], [ExplicitVRLittleEndian])
    try:
        settings = node_settings(
            tmp_path / "node",
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
        )
        index = Index(tmp_path / "index.sqlite3")
        ct_uid = _queue_object(index, tmp_path, ["pacs"])
        mr_path = tmp_path / "outputs" / "mr.dcm"
        shutil.copy(get_testdata_file("MR_small.dcm"), mr_path)
        mr_uid = str(pydicom.dcmread(mr_path).SOPInstanceUID)
        index.record_output(
            sop_instance_uid=mr_uid,
            job_id="job",
            kind="SC",
            sop_class_uid=mr_class,
            path=str(mr_path),
            destinations=["pacs"],
        )
        assert Outbox(settings, index).deliver_due() == 1
    finally:
        pacs.stop()
    rows = {r["sop_instance_uid"]: r for r in index.deliveries()}
    assert rows[ct_uid]["state"] == "delivered"
    assert rows[mr_uid]["state"] == "dead" and rows[mr_uid]["last_status"] == 0x0122
    assert "does not accept MR Image Storage" in rows[mr_uid]["last_error"]
    assert [uid for uid, _, _ in pacs.received] == [ct_uid]


def test_objects_are_transcoded_to_what_the_destination_accepts(tmp_path: Path) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    cr = next(iter(shared_data_folder("cr_chest_philips_j2k").glob("*.dcm")))
    cr_dataset = pydicom.dcmread(cr)
    plain = RecordingPACS([str(cr_dataset.SOPClassUID)], [ExplicitVRLittleEndian])
    rle = RecordingPACS(["1.2.840.10008.5.1.4.1.1.2"], [RLELossless])
    try:
        settings = node_settings(
            tmp_path / "node",
            destinations=[
                {"name": "plain", "ae_title": "PACS", "host": "127.0.0.1", "port": plain.port},
                {
                    "name": "rle",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": rle.port,
                    "transfer_syntaxes": [RLELossless],
                },
            ],
        )
        index = Index(tmp_path / "index.sqlite3")
        index.record_output(
            sop_instance_uid=str(cr_dataset.SOPInstanceUID),
            job_id="job",
            kind="SC",
            sop_class_uid=str(cr_dataset.SOPClassUID),
            path=str(cr),
            destinations=["plain"],
        )
        ct_uid = _queue_object(index, tmp_path, ["rle"])
        assert Outbox(settings, index).deliver_due() == 2
    finally:
        plain.stop()
        rle.stop()
    ((uid, syntax, received),) = plain.received
    assert uid == cr_dataset.SOPInstanceUID and syntax == ExplicitVRLittleEndian
    assert (received.pixel_array == cr_dataset.pixel_array).all()  # JPEG 2000 decoded for a plain peer
    ((uid, syntax, received),) = rle.received
    assert uid == ct_uid and syntax == RLELossless
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert (received.pixel_array == original.pixel_array).all()  # compressed losslessly for an RLE-only peer


def test_resubmit_command_requeues_a_dead_letter_and_the_outbox_delivers_it(tmp_path: Path) -> None:
    import sys

    import yaml

    port = free_port()
    config = {
        "node": {"storage": str(tmp_path / "var")},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        "delivery": {"retry_initial_seconds": 1, "give_up_after_hours": 0.0001},
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    from config import load_settings

    settings = load_settings(path, environ={})
    index = Index(settings.node.storage / "index.sqlite3")
    outbox = Outbox(settings, index)
    uid = _queue_object(index, tmp_path, ["pacs"])
    outbox.deliver_due(time.time())
    outbox.deliver_due(time.time() + 10)
    assert index.deliveries(uid)[0]["state"] == "dead"
    completed = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "resubmit", "--config", str(path), "--destination", "pacs"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "1 delivery queued again" in completed.stdout
    row = index.deliveries(uid)[0]
    assert row["state"] == "pending" and row["attempts"] == 0
    receiver = _storescp(tmp_path / "received", port)
    try:
        assert outbox.deliver_due() == 1
    finally:
        receiver.terminate()
        receiver.wait()
    assert index.deliveries(uid)[0]["state"] == "delivered"


def _workers_of(storage: Path) -> list[int]:
    """Pids of embedded workers started by a node whose storage is ``storage`` (read from /proc)."""
    marker = f"MEDAGENT_CONFIG={storage / 'effective-config.yaml'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environment and b"workers.embedded" in command:
            pids.append(int(entry.name))
    return pids


def test_undelivered_results_are_sent_after_the_node_is_killed_and_restarted(tmp_path: Path) -> None:
    import signal
    import sys

    import yaml

    pacs_port, node_port = free_port(), free_port()
    config = {
        "node": {"storage": str(tmp_path / "var"), "port": node_port},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
        "delivery": {"retry_initial_seconds": 0.2, "retry_max_seconds": 0.5},
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    storage = tmp_path / "var"
    storage.mkdir()
    index = Index(storage / "index.sqlite3")
    uid = _queue_object(index, tmp_path, ["pacs"])

    def start_node() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    node = start_node()
    try:
        wait_until(lambda: index.deliveries(uid)[0]["attempts"] >= 2, timeout=60, what="failed attempts")
        wait_until(lambda: _workers_of(storage), timeout=60, what="the embedded worker")
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
    assert index.deliveries(uid)[0]["state"] == "pending"
    # the killed node's embedded worker goes with it: a restart must not find two workers on its queue
    wait_until(lambda: not _workers_of(storage), timeout=30, what="the orphaned worker to end")
    receiver = _storescp(tmp_path / "received", pacs_port)
    node = start_node()
    try:
        wait_until(
            lambda: index.deliveries(uid)[0]["state"] == "delivered",
            timeout=60,
            what="delivery after restart",
        )
        time.sleep(1.0)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        receiver.terminate()
        receiver.wait()
    received = list((tmp_path / "received").glob("*"))
    assert len(received) == 1 and pydicom.dcmread(received[0]).SOPInstanceUID == uid  # once, not twice
