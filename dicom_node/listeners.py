"""Several processes that take associations on the node's port (``node.listener_processes``).

One Python process receives at most about 350 instances a second on two cores, however many associations
it holds: its threads take turns with the GIL. With ``node.listener_processes`` above 1 the node runs
that many listeners in all: its own SCP and ``listener_processes - 1`` helper processes, each a
``StorageSCP`` writing to the same spool and index. Only the node's SCP listens on the port. It accepts
every connection and, before reading a byte of it, hands it to the listener with the fewest open
connections (``ListenerProcesses.hand_over``; ties go round in turn): it sends the socket's descriptor over
a Unix socket pair (``socket.send_fds``) to that helper, whose SCP serves it as if it had accepted it
(``transport._InboxServer``), TLS handshake included. A kernel spreading connections by a hash of their
addresses (``SO_REUSEPORT``) put 4 associations on 2 listeners 4-0 or 3-1 in most runs; by load, the split
is even. What the listeners share:

- the load (``AssociationSlots.connections``): each listener counts down its own connections as they
  close; the node counts one up for the listener it picks;
- the association limit (``AssociationSlots``): ``node.max_associations`` counts the associations of
  every listener together, and one beyond it is rejected transiently whichever listener took it;
- one store at a time per SOP Instance UID (``InstanceLocks``): a thread lock per stripe inside a
  process, and a byte-range lock (``fcntl``) on ``<storage>/instance.locks`` between processes;
- the index: SQLite in WAL mode (or PostgreSQL) takes writers from several processes; the study tracker,
  job dispatch and outbox run only in the node's own process and read what every listener wrote.

The node's process supervises its helpers: it starts them after its own SCP listens, sends them every
settings change the SCP takes live (sources, AE titles; a new port is the node's alone), restarts one
that died (its associations still open are recorded as ``interrupted``; what it acknowledged is on disk
and indexed; a connection that cannot be handed over is served by the node), and stops them when it
stops. A helper stops by itself when the node's process is gone (its pipe to the node ends).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import multiprocessing
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
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
#: Linux's open-file-description lock, wait for it (None where the platform has none)
_OFD_SETLKW: int | None = getattr(fcntl, "F_OFD_SETLKW", None)


class InstanceLocks:
    """One store at a time per SOP Instance UID, in ``LOCK_STRIPES`` stripes, across threads and processes.

    A thread takes its process's stripe lock, then the same stripe's byte of ``<storage>/instance.locks``
    with an open-file-description lock (``F_OFD_SETLKW``; it belongs to this object's open file, so the
    thread lock orders the threads of one process, the record lock the processes). Not ``fcntl.lockf``:
    a POSIX record lock belongs to the whole process, and the kernel's deadlock check then saw process A
    (one thread waiting for B's stripe) and process B (another thread waiting for A's) as a cycle and
    failed a C-STORE with EDEADLK, although no thread waited while holding a stripe. Where the platform
    has no OFD locks, ``lockf`` is used and EDEADLK, never a real deadlock here, is retried.
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
            self._lock(fcntl.F_WRLCK, stripe)
            try:
                yield
            finally:
                self._lock(fcntl.F_UNLCK, stripe)

    def _lock(self, kind: int, stripe: int) -> None:
        if _OFD_SETLKW is not None:
            # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for an OFD lock), native alignment
            request = struct.pack("@hhqqi4x", kind, os.SEEK_SET, stripe, 1, 0)
            fcntl.fcntl(self._file, _OFD_SETLKW, request)
            return
        while True:
            try:
                fcntl.lockf(self._file, fcntl.LOCK_UN if kind == fcntl.F_UNLCK else fcntl.LOCK_EX, 1, stripe)
                return
            except OSError as error:
                if error.errno != errno.EDEADLK:
                    raise
                time.sleep(0.001)


class AssociationSlots:
    """The associations and connections each listener holds, in shared memory, so that the limit counts
    them all and the node hands each connection to the least loaded listener.

    Listener ``n`` writes only ``counts[n]``; ``reserve`` checks the total and counts one more under one
    lock shared by every listener. ``connections[n]``: the node counts one up when it gives listener ``n``
    a connection (``assign``), listener ``n`` counts it down when it closes (``closed``). The node clears
    a dead helper's counts before it starts another.
    """

    def __init__(self, listeners: int, limit: int) -> None:
        self.counts = _context.Array("i", listeners)  # its own lock: reserve takes it
        self.connections = _context.Array("i", listeners)  # its own lock: assign and closed take it
        self.limit = _context.Value("i", limit, lock=False)
        self._turn = 0  # the node's only: where the next tie is broken

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

    def assign(self, listeners: Sequence[int]) -> int:
        """The one of ``listeners`` with the fewest open connections (ties in turn); counts one more."""
        with self.connections.get_lock():
            start = self._turn % len(listeners)
            ordered = [*listeners[start:], *listeners[:start]]
            chosen = min(ordered, key=lambda n: self.connections[n])
            self._turn = start + ordered.index(chosen) + 1
            self.connections[chosen] += 1
            return chosen

    def moved(self, source: int, target: int) -> None:
        """A connection ``assign`` gave ``source`` went to ``target`` instead (``source`` was gone)."""
        with self.connections.get_lock():
            self.connections[source] = max(0, self.connections[source] - 1)
            self.connections[target] += 1

    def closed(self, listener: int) -> None:
        with self.connections.get_lock():
            self.connections[listener] = max(0, self.connections[listener] - 1)

    def clear(self, listener: int) -> None:
        with self.counts.get_lock():
            self.counts[listener] = 0
        with self.connections.get_lock():
            self.connections[listener] = 0

    def total(self) -> int:
        with self.counts.get_lock():
            return sum(self.counts[:])


class _Helper:
    """One helper process, the node's end of its pipe and of its inboxes."""

    def __init__(
        self, number: int, process: Any, connection: Connection, inboxes: dict[str, socket.socket]
    ) -> None:
        self.number = number
        self.process = process
        self.connection = connection
        self.inboxes = inboxes

    def close(self) -> None:
        self.connection.close()
        for inbox in self.inboxes.values():
            inbox.close()


def _listening_settings(settings: Settings, port: int, tls_port: int | None) -> dict[str, Any]:
    """``settings`` as a helper takes them: the ports the node's SCP actually bound (0 picks one)."""
    node: dict[str, Any] = {"port": port}
    if settings.node.tls is not None and settings.node.tls.port is not None and tls_port is not None:
        node["tls"] = settings.node.tls.model_copy(update={"port": tls_port})
    return settings.model_copy(update={"node": settings.node.model_copy(update=node)}).model_dump(mode="json")


def _kinds(settings: Settings) -> tuple[str, ...]:
    """The node's listeners: "plain" on ``node.port`` (TLS there when TLS has no port of its own) and
    "tls" on ``node.tls.port``."""
    tls = settings.node.tls
    return ("plain", "tls") if tls is not None and tls.port is not None else ("plain",)


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
                helper = self._spawn(number)
                with self._lock:
                    self._helpers[number] = helper
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="medagent-listeners", daemon=True)
        self._supervisor.start()

    def _spawn(self, number: int) -> _Helper:
        ours, theirs = _context.Pipe()
        pairs = {
            kind: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for kind in _kinds(self.settings)
        }
        settings = _listening_settings(self.settings, *self._ports)
        process = _context.Process(
            target=serve,
            args=(
                settings,
                number,
                self.slots,
                theirs,
                {kind: pair[1] for kind, pair in pairs.items()},
                logging.getLogger().getEffectiveLevel(),
            ),
            name=f"medagent-listener-{number}",
            daemon=True,
        )
        try:
            process.start()
        finally:
            theirs.close()
            for _ours, helpers_end in pairs.values():
                helpers_end.close()
        inboxes = {kind: pair[0] for kind, pair in pairs.items()}
        helper = _Helper(number, process, ours, inboxes)
        if not ours.poll(HELPER_START_SECONDS):
            process.kill()
            helper.close()
            raise RuntimeError(f"listener process {number} did not start within {HELPER_START_SECONDS:.0f} s")
        try:
            message = ours.recv()
        except EOFError:
            message = ("failed", "it exited")
        if message[0] != "listening":
            process.join(timeout=5)
            helper.close()
            raise RuntimeError(f"listener process {number} could not listen: {message[1]}")
        logger.info(
            "listener process %d (pid %d) takes connections of port %d", number, process.pid, self._ports[0]
        )
        return helper

    def hand_over(self, kind: str, client: socket.socket) -> bool:
        """Give a connection the node accepted on its ``kind`` listener to the least loaded listener:
        True when a helper took it (the node then closes its own descriptor), False when it is the node's
        (also when the chosen helper could not take it: it died, or its inbox is full)."""
        with self._lock:
            inboxes = {helper.number: helper.inboxes[kind] for helper in self._helpers.values()}
        target = self.slots.assign([0, *sorted(inboxes)])
        if target == 0:
            return False
        try:
            socket.send_fds(inboxes[target], [b"c"], [client.fileno()], socket.MSG_DONTWAIT)
        except OSError as exc:
            logger.warning("could not hand a connection to listener process %d (%s); taking it", target, exc)
            self.slots.moved(target, 0)
            return False
        return True

    def _supervise(self) -> None:
        missing: set[int] = set()  # helpers that died and are not running again yet
        while not self._stopping.wait(_SUPERVISE_SECONDS):
            with self._lock:
                dead = [helper for helper in self._helpers.values() if not helper.process.is_alive()]
                for helper in dead:
                    del self._helpers[helper.number]  # no more connections for it
            for helper in dead:
                logger.error(
                    "listener process %d (pid %d) exited with %s; starting another",
                    helper.number,
                    helper.process.pid,
                    helper.process.exitcode,
                )
                helper.close()
                self.slots.clear(helper.number)
                try:
                    self._interrupt(helper.process.pid)
                except Exception:
                    logger.exception("could not close the associations of listener process %d", helper.number)
                missing.add(helper.number)
            for number in sorted(missing):
                if self._stopping.is_set():
                    return
                try:
                    replacement = self._spawn(number)
                except Exception:
                    logger.exception("could not restart listener process %d; retrying", number)
                    continue
                with self._lock:
                    self._helpers[number] = replacement
                missing.discard(number)

    def update_settings(self, settings: Settings, port: int, tls_port: int | None) -> None:
        """Send settings the SCP took live to every helper (a new port is the node's SCP's alone)."""
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
            helper.close()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)


def serve(
    settings_json: dict[str, Any],
    number: int,
    slots: AssociationSlots,
    connection: Connection,
    inboxes: dict[str, socket.socket],
    log_level: int,
) -> None:
    """A helper process: serve the connections the node passes to ``inboxes`` until the node says stop
    or its pipe ends (the node is gone)."""
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)-7s %(name)s [listener {number}]: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(max(log_level, logging.WARNING))
    from dicom_node.allocator import keep_freed_memory
    from dicom_node.index import open_index
    from dicom_node.scp import StorageSCP
    from dicom_node.spool import Spool

    keep_freed_memory()
    try:
        settings = Settings.model_validate(settings_json)
        scp = StorageSCP(
            settings,
            open_index(settings),
            Spool(settings.node.storage),
            slots=slots,
            listener=number,
            inboxes=inboxes,
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
