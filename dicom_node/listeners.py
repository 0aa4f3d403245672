"""Several processes that accept associations on the node's port (``node.listener_processes``).

One Python process receives at most about 350 instances a second on two cores, however many associations
it holds: its threads take turns with the GIL. With ``node.listener_processes`` above 1 the node starts
that many listeners in all: its own SCP and ``listener_processes - 1`` helper processes, each a
``StorageSCP`` on the same address and port (``SO_REUSEPORT``: the kernel spreads new connections over
them), writing to the same spool and index. What they share:

- the association limit (``AssociationSlots``): ``node.max_associations`` counts the associations of
  every listener together, and one beyond it is rejected transiently whichever listener took it;
- one store at a time per SOP Instance UID (``InstanceLocks``): a thread lock per stripe inside a
  process, and a byte-range lock (``fcntl``) on ``<storage>/instance.locks`` between processes;
- the index: SQLite in WAL mode (or PostgreSQL) takes writers from several processes; the study tracker,
  job dispatch and outbox run only in the node's own process and read what every listener wrote.

The node's process supervises its helpers: it starts them after its own SCP listens (they bind the port it
bound, also when ``node.port`` is 0), sends them every settings change the SCP takes live, restarts one
that died (its associations still open are recorded as ``interrupted``; what it acknowledged is on disk
and indexed), and stops them when it stops. A helper stops by itself when the node's process is gone (its
pipe to the node ends).
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from config import Settings

logger = logging.getLogger(__name__)

LOCK_STRIPES = 1024
LOCK_FILE = "instance.locks"
#: seconds a helper has to listen before the node gives up starting it
HELPER_START_SECONDS = 60.0
_SUPERVISE_SECONDS = 1.0
_context = multiprocessing.get_context("spawn")


class InstanceLocks:
    """One store at a time per SOP Instance UID, in ``LOCK_STRIPES`` stripes, across threads and processes.

    A thread takes its process's stripe lock, then the same stripe's byte of ``<storage>/instance.locks``
    with ``fcntl.lockf`` (POSIX record locks belong to the process, so the thread lock orders the threads
    of one process, the record lock the processes). The lock file stays open for the life of the object:
    closing any descriptor of it would release the process's record locks.
    """

    def __init__(self, storage: str | os.PathLike[str]) -> None:
        self.path = Path(storage) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held open on purpose (see the docstring)
        self._threads = tuple(threading.Lock() for _ in range(LOCK_STRIPES))

    def __repr__(self) -> str:
        return f"InstanceLocks({str(self.path)!r})"

    def stripe(self, sop_instance_uid: str) -> int:
        """The stripe of a UID: the same in every process (``hash`` of a str is salted per process)."""
        return zlib.crc32(sop_instance_uid.encode("ascii", "replace")) % LOCK_STRIPES

    @contextmanager
    def hold(self, sop_instance_uid: str) -> Iterator[None]:
        stripe = self.stripe(sop_instance_uid)
        with self._threads[stripe]:
            fcntl.lockf(self._file, fcntl.LOCK_EX, 1, stripe)
            try:
                yield
            finally:
                fcntl.lockf(self._file, fcntl.LOCK_UN, 1, stripe)


class AssociationSlots:
    """The associations each listener holds, in shared memory, so that the limit counts them all.

    Listener ``n`` writes only ``counts[n]``; ``reserve`` checks the total and counts one more under one
    lock shared by every listener. The node clears a dead helper's count before it starts another.
    """

    def __init__(self, listeners: int, limit: int) -> None:
        self.counts = _context.Array("i", listeners)  # its own lock: reserve takes it
        self.limit = _context.Value("i", limit, lock=False)

    def reserve(self, listener: int) -> bool:
        """Count one more association for ``listener``; False (nothing counted) at the limit."""
        with self.counts.get_lock():
            if sum(self.counts[:]) >= self.limit.value:
                return False
            self.counts[listener] += 1
            return True

    def release(self, listener: int) -> None:
        with self.counts.get_lock():
            self.counts[listener] = max(0, self.counts[listener] - 1)

    def clear(self, listener: int) -> None:
        with self.counts.get_lock():
            self.counts[listener] = 0

    def total(self) -> int:
        with self.counts.get_lock():
            return sum(self.counts[:])


class _Helper:
    """One helper process and the node's end of its pipe."""

    def __init__(self, number: int, process: Any, connection: Connection) -> None:
        self.number = number
        self.process = process
        self.connection = connection


def _listening_settings(settings: Settings, port: int, tls_port: int | None) -> dict[str, Any]:
    """``settings`` as a helper takes them: the ports the node's SCP actually bound (0 picks one)."""
    node: dict[str, Any] = {"port": port}
    if settings.node.tls is not None and settings.node.tls.port is not None and tls_port is not None:
        node["tls"] = settings.node.tls.model_copy(update={"port": tls_port})
    return settings.model_copy(update={"node": settings.node.model_copy(update=node)}).model_dump(mode="json")


class ListenerProcesses:
    """The node's helper listeners: ``node.listener_processes - 1`` processes beside the node's SCP."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.node.listener_processes
        self.slots = AssociationSlots(self.count, settings.node.max_associations)
        self._helpers: dict[int, _Helper] = {}
        self._ports: tuple[int, int | None] = (0, None)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._interrupt: Callable[[int], None] = lambda pid: None  # set by start()

    def __repr__(self) -> str:
        return f"ListenerProcesses(count={self.count})"

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [helper.process.pid for helper in self._helpers.values()]

    def start(self, port: int, tls_port: int | None, interrupt: Callable[[int], None]) -> None:
        """Start the helpers on the ports the node's SCP bound; ``interrupt(pid)`` closes the associations
        a dead helper left open in the audit. Raises ``RuntimeError`` when a helper does not listen."""
        self._ports = (port, tls_port)
        self._interrupt = interrupt
        self._stopping.clear()
        try:
            for number in range(1, self.count):
                self._helpers[number] = self._spawn(number)
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="medagent-listeners", daemon=True)
        self._supervisor.start()

    def _spawn(self, number: int) -> _Helper:
        ours, theirs = _context.Pipe()
        settings = _listening_settings(self.settings, *self._ports)
        process = _context.Process(
            target=serve,
            args=(settings, number, self.slots, theirs, logging.getLogger().getEffectiveLevel()),
            name=f"medagent-listener-{number}",
            daemon=True,
        )
        process.start()
        theirs.close()
        if not ours.poll(HELPER_START_SECONDS):
            process.kill()
            raise RuntimeError(f"listener process {number} did not start within {HELPER_START_SECONDS:.0f} s")
        try:
            message = ours.recv()
        except EOFError:
            message = ("failed", "it exited")
        if message[0] != "listening":
            process.join(timeout=5)
            raise RuntimeError(f"listener process {number} could not listen: {message[1]}")
        logger.info("listener process %d (pid %d) listening on port %d", number, process.pid, self._ports[0])
        return _Helper(number, process, ours)

    def _supervise(self) -> None:
        while not self._stopping.wait(_SUPERVISE_SECONDS):
            with self._lock:
                dead = [helper for helper in self._helpers.values() if not helper.process.is_alive()]
            for helper in dead:
                if self._stopping.is_set():
                    return
                logger.error(
                    "listener process %d (pid %d) exited with %s; starting another",
                    helper.number,
                    helper.process.pid,
                    helper.process.exitcode,
                )
                helper.connection.close()
                self.slots.clear(helper.number)
                try:
                    self._interrupt(helper.process.pid)
                except Exception:
                    logger.exception("could not close the associations of listener process %d", helper.number)
                try:
                    replacement = self._spawn(helper.number)
                except Exception:
                    logger.exception("could not restart listener process %d; retrying", helper.number)
                    continue
                with self._lock:
                    self._helpers[helper.number] = replacement

    def update_settings(self, settings: Settings, port: int, tls_port: int | None) -> None:
        """Send settings the SCP took live to every helper (they open a new port as the SCP did)."""
        self.settings = settings
        self._ports = (port, tls_port)
        payload = ("settings", _listening_settings(settings, port, tls_port))
        with self._lock:
            helpers = list(self._helpers.values())
        for helper in helpers:
            try:
                helper.connection.send(payload)
            except OSError:
                logger.warning(
                    "listener process %d did not take the new settings (not running)", helper.number
                )

    def stop(self) -> None:
        """Stop every helper: each stops listening and finishes the instance it is storing."""
        self._stopping.set()
        with self._lock:
            helpers = list(self._helpers.values())
            self._helpers.clear()
        for helper in helpers:
            try:
                helper.connection.send(("stop", None))
            except OSError:
                pass
        for helper in helpers:
            helper.process.join(timeout=30)
            if helper.process.is_alive():
                logger.warning("listener process %d did not stop in 30 s; killing it", helper.number)
                helper.process.kill()
                helper.process.join()
            helper.connection.close()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)


def serve(
    settings_json: dict[str, Any],
    number: int,
    slots: AssociationSlots,
    connection: Connection,
    log_level: int,
) -> None:
    """A helper process: listen until the node says stop or its pipe ends (the node is gone)."""
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)-7s %(name)s [listener {number}]: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(max(log_level, logging.WARNING))
    from dicom_node.index import open_index
    from dicom_node.scp import StorageSCP
    from dicom_node.spool import Spool

    try:
        settings = Settings.model_validate(settings_json)
        scp = StorageSCP(
            settings, open_index(settings), Spool(settings.node.storage), slots=slots, listener=number
        )
        scp.listen()
    except Exception as exc:
        logger.exception("listener process %d could not start", number)
        connection.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("listening", None))
    try:
        while True:
            try:
                kind, payload = connection.recv()
            except (EOFError, OSError):
                logger.warning("listener process %d: the node is gone; stopping", number)
                break
            if kind == "stop":
                break
            try:
                scp.update_settings(Settings.model_validate(payload))
            except Exception:
                logger.exception("listener process %d could not take the new settings", number)
    finally:
        scp.stop()
        scp.index.close()


__all__ = ["AssociationSlots", "InstanceLocks", "ListenerProcesses", "serve"]
