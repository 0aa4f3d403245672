"""Several listener processes on one port (``node.listener_processes``): the node hands each connection to
the least loaded one; one index, one limit, one lock."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage

from dicom_node import listeners as listeners_module
from dicom_node.index import Index
from dicom_node.listeners import InstanceLocks, ListenerProcesses, _Helper
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.conftest import node_settings, running_node
from tests.helpers.ingest import ct_series, new_uid, open_association
from tests.helpers.peers import PEER_ENVIRONMENT, run_dcmtk, shared_data, wait_until

pytestmark = pytest.mark.integration

CT = [(CTImageStorage, [ExplicitVRLittleEndian])]


class _Listeners:
    """The node's SCP and its helper processes, without the rest of the node."""

    def __init__(self, storage: Path, **node: Any) -> None:
        self.settings = node_settings(storage, node={"listener_processes": 2, **node}).with_absolute_storage()
        self.index = Index(storage / "index.sqlite3")
        self.processes = ListenerProcesses(self.settings)
        self.scp = StorageSCP(
            self.settings,
            self.index,
            Spool(storage),
            slots=self.processes.slots,
            hand_over=self.processes.hand_over,
        )
        self.interrupted: list[int] = []

    def start(self) -> _Listeners:
        self.scp.start()
        self.processes.start(self.scp.port, None, self._interrupt)
        return self

    def _interrupt(self, pid: int) -> None:
        self.interrupted.append(pid)
        self.index.interrupt_open_associations("MEDAGENT", listener_pid=pid)

    def stop(self) -> None:
        self.processes.stop()
        self.scp.stop()

    def pid_of(self, association_number: int) -> int:
        """The process that took the ``association_number``-th association (0 first), from the audit."""
        rows = self.index.query("SELECT listener_pid FROM associations ORDER BY started_at")
        return int(rows[association_number]["listener_pid"])

    def wait_for_audit_rows(self, count: int) -> None:
        wait_until(lambda: len(self.index.query("SELECT 1 FROM associations")) == count, timeout=10, what=f"{count} audit rows")  # fmt: skip

    def wait_until_idle(self) -> None:
        """Until every listener counts its connections closed (after the audit says released)."""
        wait_until(lambda: sum(self.processes.slots.connections[:]) == 0, timeout=10, what="every connection closed")  # fmt: skip


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[_Listeners]:
    running = _Listeners(tmp_path / "node", max_associations=4).start()
    try:
        yield running
    finally:
        running.stop()


def _echo(port: int) -> Any:
    return run_dcmtk("echoscu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(port))


def test_connections_take_turns_between_processes_and_store_into_one_index(listeners: _Listeners) -> None:
    study = new_uid("listeners study")
    # one association after the other: both listeners idle each time, so they take turns
    for sent in range(4):
        instances = ct_series(2, study, new_uid("listeners series", sent), f"listeners {sent}")
        assoc = open_association(listeners.scp.port, CT)
        assert [int(assoc.send_c_store(ds).Status) for ds in instances] == [0, 0]
        assoc.release()
        wait_until(lambda: listeners.index.query("SELECT COUNT(*) AS n FROM associations WHERE outcome='open'")[0]["n"] == 0, timeout=10, what="the release in the audit")  # fmt: skip
        listeners.wait_until_idle()
    (helper,) = listeners.processes.pids
    taken = [listeners.pid_of(n) for n in range(4)]
    assert taken in ([os.getpid(), helper] * 2, [helper, os.getpid()] * 2)
    rows = listeners.index.query(
        "SELECT i.path, a.listener_pid FROM instances i JOIN associations a USING (association_id)"
        " WHERE i.study_instance_uid=?",
        (study,),
    )
    assert len(rows) == 8
    assert sorted(row["listener_pid"] for row in rows) == sorted([os.getpid(), helper] * 4)
    assert all(Path(row["path"]).is_file() for row in rows)
    assert listeners.processes.slots.total() == 0


def test_each_connection_goes_to_the_process_with_the_fewest(listeners: _Listeners) -> None:
    (helper,) = listeners.processes.pids
    held = [open_association(listeners.scp.port, CT) for _ in range(4)]
    try:
        listeners.wait_for_audit_rows(4)
        taken = [listeners.pid_of(n) for n in range(4)]
        assert sorted(taken) == sorted([os.getpid(), helper] * 2)  # an even split
        assert list(listeners.processes.slots.connections[:]) == [2, 2]
        # the node's two go: the next two connections both go to the node, now the less loaded
        for assoc, pid in zip(list(held), taken, strict=True):
            if pid == os.getpid():
                assoc.release()
                held.remove(assoc)
        wait_until(lambda: list(listeners.processes.slots.connections[:]) == [0, 2], timeout=10, what="the node idle")  # fmt: skip
        held += [open_association(listeners.scp.port, CT) for _ in range(2)]
        listeners.wait_for_audit_rows(6)
        assert [listeners.pid_of(4), listeners.pid_of(5)] == [os.getpid(), os.getpid()]
        assert all(assoc.is_established for assoc in held)
    finally:
        for assoc in held:
            assoc.release()
    listeners.wait_until_idle()
    assert listeners.processes.slots.total() == 0


def test_the_association_limit_counts_every_process(listeners: _Listeners) -> None:
    held = [open_association(listeners.scp.port, CT) for _ in range(4)]
    try:
        assert listeners.processes.slots.total() == 4
        # six new connections, three to each listener (each holds two): all rejected, transiently; a
        # listener that counted only its own associations would accept them
        for _ in range(6):
            echo = _echo(listeners.scp.port)
            assert echo.returncode != 0
            assert (
                "Transient" in echo.stderr + echo.stdout
                and "Local Limit Exceeded" in echo.stderr + echo.stdout
            )
        rejected = wait_until(
            lambda: (
                (rows := listeners.index.query("SELECT detail FROM associations WHERE outcome='rejected'"))
                and len(rows) == 6
                and rows
            ),
            10,
            0.1,
            "six rejections in the audit",
        )
        assert all("over all listener processes" in row["detail"] for row in rejected)
        held.pop().release()
        wait_until(lambda: listeners.processes.slots.total() == 3, timeout=10, what="the released slot")
        assert _echo(listeners.scp.port).returncode == 0
    finally:
        for assoc in held:
            assoc.release()
    wait_until(lambda: listeners.processes.slots.total() == 0, timeout=10, what="every slot given back")


def test_a_killed_helper_is_replaced_and_its_open_associations_are_interrupted(listeners: _Listeners) -> None:
    (helper,) = listeners.processes.pids
    # four associations: two on each process
    associations = [open_association(listeners.scp.port, CT) for _ in range(4)]
    listeners.wait_for_audit_rows(4)
    held = [(assoc, listeners.pid_of(n)) for n, assoc in enumerate(associations)]
    assert any(pid == helper for _, pid in held)
    os.kill(helper, signal.SIGKILL)
    wait_until(lambda: listeners.processes.pids not in ([], [helper]), timeout=30, what="a new helper")
    assert listeners.interrupted == [helper]
    on_helper = listeners.index.query(
        "SELECT outcome, detail FROM associations WHERE listener_pid=?", (helper,)
    )
    assert on_helper and all(row["outcome"] == "interrupted" for row in on_helper)
    assert all(f"listener process {helper} stopped" in row["detail"] for row in on_helper)
    # the node's own associations are untouched and its slots still counted; the dead helper's are free
    on_node = [assoc for assoc, pid in held if pid != helper]
    assert listeners.processes.slots.total() == len(on_node)
    for assoc in on_node:
        assert assoc.is_established
        assoc.release()
    wait_until(lambda: listeners.processes.slots.total() == 0, timeout=10, what="every slot given back")
    assert _echo(listeners.scp.port).returncode == 0


def test_a_connection_goes_to_the_least_loaded_listener_that_can_take_it(tmp_path: Path) -> None:
    """``hand_over`` with real sockets: a helper whose inbox is gone leaves the connection to the node; a
    helper that is there gets a descriptor of the very connection."""
    settings = node_settings(tmp_path, node={"listener_processes": 2}).with_absolute_storage()
    processes = ListenerProcesses(settings)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    node_end, helper_end = multiprocessing.Pipe()
    processes._helpers[1] = _Helper(1, None, node_end, {"plain": ours})
    with socket.create_server(("127.0.0.1", 0)) as server:
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            assert processes.hand_over("plain", accepted[0]) is False  # a tie: the node's turn
            assert processes.hand_over("plain", accepted[1]) is True  # the helper has fewer
            _message, descriptors, _flags, _address = socket.recv_fds(theirs, 1, 1)
            with socket.socket(fileno=descriptors[0]) as passed:
                clients[1].sendall(b"over the passed descriptor")
                assert passed.recv(64) == b"over the passed descriptor"
            assert list(processes.slots.connections[:]) == [1, 1]
            theirs.close()  # the helper is gone before the node noticed: the node keeps the connection
            assert processes.hand_over("plain", accepted[2]) is False
            assert list(processes.slots.connections[:]) == [2, 1]
        finally:
            for connection in (*clients, *accepted, ours, node_end, helper_end):
                connection.close()


def _uid_on_another_stripe(locks: InstanceLocks, uid: str) -> str:
    return next(
        other for other in (f"1.2.3.{n}" for n in range(5, 100)) if locks.stripe(other) != locks.stripe(uid)
    )


def _hold_lock(storage: str, uid: str, held: Any, release: Any) -> None:
    locks = InstanceLocks(storage)
    with locks.hold(uid):
        held.set()
        release.wait(30)


def test_one_store_per_instance_uid_across_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    child = context.Process(target=_hold_lock, args=(str(tmp_path), "1.2.3.4", held, release))
    child.start()
    try:
        assert held.wait(30)
        locks = InstanceLocks(tmp_path)
        acquired: list[float] = []
        started = time.monotonic()

        def take() -> None:
            with locks.hold("1.2.3.4"):
                acquired.append(time.monotonic() - started)

        waiter = threading.Thread(target=take)
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not acquired  # the other process holds this UID's stripe
        other = _uid_on_another_stripe(locks, "1.2.3.4")
        with locks.hold(other):  # another stripe is free meanwhile
            pass
        release.set()
        waiter.join(timeout=10)
        assert acquired and acquired[0] >= 1.0
    finally:
        release.set()
        child.join(timeout=10)


def _hold_one_then_take_another(
    storage: str, first: str, second: str, held: Any, go: Any, result: Any, ofd: bool
) -> None:
    if not ofd:
        listeners_module._OFD_SETLKW = None
    locks = InstanceLocks(storage)
    taken = threading.Event()

    def take_second() -> None:
        try:
            with locks.hold(second):
                result.put("taken")
        except OSError as error:
            result.put(f"{type(error).__name__}: {error}")
        finally:
            taken.set()

    with locks.hold(first):
        held.set()
        go.wait(30)
        threading.Thread(target=take_second).start()
        taken.wait(30)


@pytest.mark.parametrize("ofd", [True, False], ids=["ofd-locks", "lockf-where-no-ofd"])
def test_threads_of_two_processes_waiting_on_each_others_stripes_are_no_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ofd: bool
) -> None:
    # Process A: thread 1 holds X, thread 2 waits for Y. Process B: thread 1 holds Y, thread 2 asks for X.
    # No thread waits while holding, so nothing deadlocks; but POSIX record locks belong to the process,
    # and the kernel saw A waits for B waits for A and failed B's request with EDEADLK (a C-STORE failed).
    if not ofd:
        monkeypatch.setattr(listeners_module, "_OFD_SETLKW", None)
    locks = InstanceLocks(tmp_path)
    x = "1.2.3.4"
    y = _uid_on_another_stripe(locks, x)
    context = multiprocessing.get_context("spawn")
    held, go, result = context.Event(), context.Event(), context.Queue()
    child = context.Process(
        target=_hold_one_then_take_another, args=(str(tmp_path), y, x, held, go, result, ofd)
    )
    x_held, release_x, y_taken = threading.Event(), threading.Event(), threading.Event()

    def hold_x() -> None:
        with locks.hold(x):
            x_held.set()
            release_x.wait(30)

    def take_y() -> None:
        with locks.hold(y):
            y_taken.set()

    holder, taker = threading.Thread(target=hold_x), threading.Thread(target=take_y)
    holder.start()
    child.start()
    try:
        assert x_held.wait(30) and held.wait(30)
        taker.start()
        time.sleep(0.5)  # our second thread now waits in the kernel for Y
        assert not y_taken.is_set()
        go.set()  # the child's second thread asks for X
        time.sleep(0.5)
        release_x.set()
        assert result.get(timeout=30) == "taken"
        assert y_taken.wait(30)  # the child let Y go once its second thread was done
    finally:
        go.set()
        release_x.set()
        holder.join(timeout=10)
        taker.join(timeout=10)
        child.join(timeout=10)


def test_the_first_listener_refuses_a_port_another_program_listens_on(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        settings = node_settings(
            tmp_path, node={"listener_processes": 2, "port": port}
        ).with_absolute_storage()
        scp = StorageSCP(settings, Index(tmp_path / "index.sqlite3"), Spool(tmp_path))
        with pytest.raises(OSError) as raised:
            scp.start()
        assert raised.value.errno == 98  # EADDRINUSE


def test_a_node_with_two_listener_processes_makes_one_job_of_a_study_sent_over_several_associations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicom_node.node import Node

    monkeypatch.setattr(Node, "_start_worker", lambda self: None)  # the job stays queued
    sources = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))
    study = "1.2.826.0.1.3680043.8.498.4243.1"
    folder = tmp_path / "sent"
    folder.mkdir()
    files = []
    for number, source in enumerate(sources, start=1):
        dataset = pydicom.dcmread(source)
        dataset.StudyInstanceUID = study
        dataset.SeriesInstanceUID = f"{study}.1"
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = f"{study}.1.{number}"
        dataset.save_as(folder / f"{number}.dcm")
        files.append(folder / f"{number}.dcm")
    route = {"name": "mr", "match": {"Modality": "MR"}, "instruction": "Archive only",
             "completion": {"quiet_seconds": 1.0}}  # fmt: skip
    settings = node_settings(tmp_path / "node", node={"listener_processes": 2}, routes=[route])
    with running_node(settings) as node:
        assert node.listeners is not None and len(node.listeners.pids) == 1
        storescu = ("storescu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(node.scp.port))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": PEER_ENVIRONMENT}
        senders = [subprocess.Popen([*storescu, *map(str, files[part::4])], **quiet) for part in range(4)]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0, 0, 0]
        jobs = wait_until(lambda: node.index.jobs(), 30, 0.2, "the study's job")
        time.sleep(3.0)  # three quiet periods more: no second job comes
        assert len(node.index.jobs()) == 1
        assert jobs[0]["study_instance_uid"] == study
        assert len(node.index.instances_of_study(study)) == len(files)
        pids = {row["listener_pid"] for row in node.index.association_log()}
        assert pids == {os.getpid(), *node.listeners.pids}  # the first two connections go one to each
        helpers = node.listeners.pids
    # stopping the node stops its helpers
    assert all(not Path(f"/proc/{pid}").exists() for pid in helpers)


def test_settings_changed_live_reach_every_process(listeners: _Listeners) -> None:
    old_port = listeners.scp.port
    changed = node_settings(
        listeners.settings.node.storage,
        node={"listener_processes": 2, "max_associations": 4},
        sources=[{"ae_title": "LATE"}],
    ).with_absolute_storage()
    listeners.scp.update_settings(changed)
    new_port = listeners.scp.port
    assert new_port != old_port
    listeners.processes.update_settings(changed, new_port, None)

    def echo_as(ae_title: str, port: int) -> Any:
        return run_dcmtk("echoscu", "-aet", ae_title, "-aec", "MEDAGENT", "127.0.0.1", str(port))

    pids: set[int] = set()
    for _attempt in range(40):  # until each process has accepted the new sender on the new port
        wait_until(lambda: echo_as("LATE", new_port).returncode == 0, 10, 0.1, "the new sender accepted")
        pids = {row["listener_pid"] for row in listeners.index.query(
            "SELECT listener_pid FROM associations WHERE calling_ae_title='LATE' AND outcome='released'")}  # fmt: skip
        if len(pids) == 2:
            break
    assert pids == {os.getpid(), *listeners.processes.pids}
    # the old sender is refused by every process, and nothing listens on the old port any more
    for _ in range(6):
        assert echo_as("STORESCU", new_port).returncode != 0
    assert echo_as("LATE", old_port).returncode != 0
