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
