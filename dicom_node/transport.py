"""An event-driven acceptor loop for pynetdicom.

pynetdicom's acceptor polls: its DUL thread sleeps 1 ms whenever it finds nothing to do, and the
association thread sleeps 1 ms on every turn of its loop. On a single association, where the sender
waits for each C-STORE response before it sends the next instance, those sleeps are most of the time an
instance takes (about 3 ms on loopback, 330 instances/s, against DCMTK storescp's 1,300).

The classes here keep pynetdicom's state machine, ACSE, DIMSE and service code and replace only the
waiting:

- the DUL thread waits in ``select`` on the socket and on a wake-up pipe that ``send_pdu`` writes to, so
  it reads a PDU as soon as it arrives and sends a response as soon as it is queued;
- the association thread blocks on the DIMSE message queue instead of polling it;
- the socket reads a PDU with ``recv_into`` into one buffer instead of 4 KiB ``recv`` calls;
- C-STORE requests take a short path (``_StoreReceiver``): the DUL thread reads their P-DATA-TF PDUs
  itself, gathers the data set into one buffer, calls the ``EVT_C_STORE`` handler and sends the response.

The short path exists because pynetdicom's own path costs 5-6 ms per 0.5 MB instance on 2 cores,
before the node does any work of its own (DCMTK storescp needs 1.6 ms in all): every PDU is copied three
times and decoded into objects, each message crosses to the association thread through two queues, and
the command set of each response is written by pydicom. Everything that is not a C-STORE request on a
storage context this association accepted (C-ECHO, storage commitment, a command split over several
PDVs, a request on an unknown context, a request that arrives while the association thread still runs
the EVT_ACCEPTED handlers) still goes through pynetdicom unchanged, as do association negotiation,
release and abort. What the short path checks, and how it answers, follows pynetdicom's
Storage SCP: the handler gets the same event (``request``, a ``C_STORE`` primitive whose ``DataSet`` is
a ``BytesIO``, and ``context``), an exception in it is answered 0xC211, and a status data set's Error
Comment and Offending Element go into the response. Past ``max_data_set_bytes`` (``start_server``) the
short path stops keeping a data set and only counts it: the handler then gets ``DataSet`` None and, as on
every event of the short path, ``event.data_set_bytes``, the size that arrived, so that it can refuse it
without the whole of it in memory.

Timers (ARTIM, the idle timeout) are still checked at least every ``_TICK`` seconds.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

_TICK = 0.05  # seconds between timer checks when nothing happens
_HANDSHAKE_SECONDS = 30.0
_INBOX_CLOSED_PAUSE = 0.1  # seconds an inbox server waits when its accepting process closed the inbox
logger = logging.getLogger(__name__)


class _Socket(AssociationSocket):
    """Reads with ``recv_into`` into a buffer of the requested size (one copy, few system calls)."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:  # the peer closed the connection: what arrived so far
                del view
                del buffer[received:]
                return buffer
            received += count
        return buffer


_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
_COMMAND, _LAST = 0x01, 0x02  # bits of a PDV's message control header
_C_STORE_RQ, _C_STORE_RSP = 0x0001, 0x8001
_NO_DATA_SET = 0x0101
_HANDLER_FAILED = 0xC211  # pynetdicom's status when the EVT_C_STORE handler raises


def _pdvs(body: bytearray) -> list[tuple[int, int, memoryview]] | None:
    """The PDVs of a P-DATA-TF PDU's body: (context ID, message control header, fragment); None if malformed."""
    view = memoryview(body)
    items = []
    offset = 0
    while offset < len(view):
        if offset + 6 > len(view):
            return None
        (length,) = struct.unpack_from(">L", view, offset)
        if length < 2 or offset + 4 + length > len(view):
            return None
        items.append((view[offset + 4], view[offset + 5], view[offset + 6 : offset + 4 + length]))
        offset += 4 + length
    return items or None


def _command_set(data: memoryview) -> dict[int, bytes] | None:
    """A command set's elements (implicit VR little endian, group 0000) by element number; None if malformed."""
    elements = {}
    offset = 0
    while offset < len(data):
        if offset + 8 > len(data):
            return None
        group, element, length = struct.unpack_from("<HHL", data, offset)
        offset += 8
        if group != 0 or offset + length > len(data):
            return None
        elements[element] = bytes(data[offset : offset + length])
        offset += length
    return elements


def _text(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii")


def _unsigned_short(value: bytes) -> int:
    (number,) = struct.unpack("<H", value)
    return int(number)


def _command_element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", 0, element, len(value)) + value


def _store_response(context_id: int, response: C_STORE) -> bytes:
    """The P-DATA-TF PDU of a C-STORE-RSP: one PDV holding the whole command set."""
    elements = [
        _command_element(0x0002, str(response.AffectedSOPClassUID).encode("ascii")),
        _command_element(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _command_element(0x0120, struct.pack("<H", response.MessageIDBeingRespondedTo)),
        _command_element(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _command_element(0x0900, struct.pack("<H", response.Status)),
    ]
    if response.OffendingElement:
        offending = response.OffendingElement
        offending = offending if isinstance(offending, (list, tuple)) else [offending]
        tags = b"".join(struct.pack("<HH", tag.group, tag.element) for tag in map(Tag, offending))
        elements.append(_command_element(0x0901, tags))
    if response.ErrorComment:
        comment = response.ErrorComment.encode("ascii", "replace")
        elements.append(_command_element(0x0902, comment + b" " * (len(comment) % 2)))
    elements.append(_command_element(0x1000, str(response.AffectedSOPInstanceUID).encode("ascii")))
    body = b"".join(elements)
    command = _command_element(0x0000, struct.pack("<L", len(body))) + body
    item = struct.pack(">LBB", len(command) + 2, context_id, _COMMAND | _LAST) + command
    return struct.pack(">BBL", _P_DATA_TF, 0, len(item)) + item


@dataclass
class _Store:
    """A C-STORE request being received on the short path."""

    context_id: int
    request: C_STORE
    #: what arrived, while it is within the limit; None past it
    data_set: BytesIO | None = field(default_factory=BytesIO)
    size: int = 0


class _StoreReceiver:
    """The short path for C-STORE requests (see the module's docstring), run in the DUL thread."""

    def __init__(self, dul: DULServiceProvider) -> None:
        self.dul = dul
        self.assoc = dul.assoc
        self.store: _Store | None = None
        #: data sets larger than this are counted, not kept (None: no limit)
        self.max_data_set_bytes: int | None = None

    def take(self, body: bytearray) -> bool:
        """Handle a P-DATA-TF PDU's PDVs: C-STORE requests here, the rest by pynetdicom's DIMSE.

        False, with nothing done, when the PDU is malformed: pynetdicom then decodes it and answers as it
        does for any bad PDU.
        """
        pdvs = _pdvs(body)
        if pdvs is None:
            return False
        for context_id, control, fragment in pdvs:
            if self.store is not None:
                if control & _COMMAND or context_id != self.store.context_id:
                    logger.warning("a PDV of another message within a C-STORE data set: aborting")
                    self.store = None
                    self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
                    return True
                self._keep(self.store, fragment)
                if control & _LAST:
                    store, self.store = self.store, None
                    self._answer(store)
                continue
            # until the association thread has run EVT_ACCEPTED's handlers and marked the association
            # established, a request waits in pynetdicom's queue like any other
            if self.assoc.is_established and self.assoc.dimse.message is None and control == _COMMAND | _LAST:
                self.store = self._start(context_id, fragment)
                if self.store is not None:
                    continue
            primitive = P_DATA()
            primitive.presentation_data_value_list = [[context_id, bytes([control]) + bytes(fragment)]]
            self.assoc.dimse.receive_primitive(primitive)
        return True

    def _keep(self, store: _Store, fragment: memoryview) -> None:
        store.size += len(fragment)
        if store.data_set is None:
            return
        if self.max_data_set_bytes is not None and store.size > self.max_data_set_bytes:
            store.data_set = None  # past the limit: the rest is counted, not kept
            return
        store.data_set.write(fragment)

    def _start(self, context_id: int, fragment: memoryview) -> _Store | None:
        """A new C-STORE request on the short path; None when pynetdicom should take the message."""
        elements = _command_set(fragment)
        if elements is None or any(
            element not in elements for element in (0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000)
        ):
            return None
        try:
            if _unsigned_short(elements[0x0100]) != _C_STORE_RQ:
                return None
            if _unsigned_short(elements[0x0800]) == _NO_DATA_SET:
                return None
            context = self.assoc._accepted_cx.get(context_id)
            sop_class_uid = _text(elements[0x0002])
            if context is None or uid_to_service_class(sop_class_uid) is not StorageServiceClass:
                return None
            request = C_STORE()
            request.MessageID = _unsigned_short(elements[0x0110])
            request.AffectedSOPClassUID = sop_class_uid
            request.AffectedSOPInstanceUID = _text(elements[0x1000])
            request.Priority = _unsigned_short(elements[0x0700])
            if 0x1030 in elements:
                request.MoveOriginatorApplicationEntityTitle = _text(elements[0x1030])
            if 0x1031 in elements:
                request.MoveOriginatorMessageID = _unsigned_short(elements[0x1031])
        except (ValueError, TypeError, struct.error, UnicodeDecodeError):
            return None  # pynetdicom decodes it and answers as it does
        return _Store(context_id, request)

    def _answer(self, store: _Store) -> None:
        """Run the ``EVT_C_STORE`` handler and send its status, as pynetdicom's Storage SCP does."""
        request = store.request
        request.DataSet = store.data_set
        context = self.assoc._accepted_cx[store.context_id]
        response = C_STORE()
        response.MessageIDBeingRespondedTo = request.MessageID
        response.AffectedSOPClassUID = request.AffectedSOPClassUID
        response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        try:
            status: int | Dataset = evt.trigger(
                self.assoc,
                evt.EVT_C_STORE,
                {"request": request, "context": context.as_tuple, "data_set_bytes": store.size},
            )
        except Exception:
            logger.exception("exception in the handler bound to evt.EVT_C_STORE")
            status = _HANDLER_FAILED
        if not self.assoc.is_established:  # the handler released or aborted the association
            return
        response = StorageServiceClass(self.assoc).validate_status(status, response)
        self.dul.socket.send(_store_response(store.context_id, response))  # type: ignore[union-attr]


class _DUL(DULServiceProvider):
    """The DUL reactor, waiting in ``select`` instead of sleeping between checks."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        # the pipe is closed under this lock once the reactor ends, so that a late wake-up never writes
        # to a descriptor number the process has since given to another file
        self._wake_lock = threading.Lock()
        self._wake_open = True
        self._stores = _StoreReceiver(self)

    def _wake(self) -> None:
        with self._wake_lock:
            if not self._wake_open:
                return
            try:
                os.write(self._wake_write, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        """Stop the reactor if the state machine is idle (Sta1), without waiting out its ``select``."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wake()
        if threading.current_thread() is not self:
            self.join()
        return True

    def _wait(self) -> None:
        """Until the socket has data, a primitive is queued to be sent, or ``_TICK`` passes."""
        sock = self.socket.socket if self.socket is not None else None
        watched: list[Any] = [self._wake_read]
        if sock is not None and self.socket._is_connected:  # type: ignore[union-attr]
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return
            watched.append(sock)
        try:
            ready, _, _ = select.select(watched, [], [], _TICK)
        except (OSError, ValueError):
            return  # a closed socket: the next turn of the loop reports it
        if self._wake_read in ready:
            try:
                while os.read(self._wake_read, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _read_pdu_data(self) -> None:
        """Read one PDU: P-DATA-TF on an established association to ``_StoreReceiver``, the rest as pynetdicom.

        The events follow pynetdicom's: Evt17 when the connection closes within a PDU, Evt19 for an unknown
        PDU type or one that does not decode.
        """
        sock = self.socket
        assert sock is not None
        try:
            header = sock.recv(6)
            pdu_type, _, length = struct.unpack(">BBL", header)
        except (OSError, TimeoutError, struct.error):
            self.event_queue.put("Evt17")  # the connection closed
            return
        if pdu_type not in _PDU_TYPES:
            logging.getLogger("pynetdicom").error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(length)
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            logging.getLogger("pynetdicom").error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if pdu_type == _P_DATA_TF and self.state_machine.current_state == "Sta6" and self._stores.take(body):
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception:
            logging.getLogger("pynetdicom").exception("Unable to decode the received PDU data")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop (one primitive sent or one PDU read per turn, then one event run)."""
        self._idle_timer.start()
        idle = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                if idle:
                    self._wait()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception:
                    self._abort_after_exception()
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                self.state_machine.do_action(event)
                idle = False
        finally:
            with self._wake_lock:
                self._wake_open = False
                os.close(self._wake_read)
                os.close(self._wake_write)

    def _abort_after_exception(self) -> None:
        """As pynetdicom does: send an A-ABORT past the state machine and stop both reactors."""
        logging.getLogger("pynetdicom").exception("exception in the DUL reactor, aborting the association")
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        try:
            self.socket.send(abort.encode())  # type: ignore[union-attr]
        except Exception:
            pass
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class _Association(Association):
    """An acceptor whose loop blocks on the DIMSE message queue instead of polling it every 1 ms."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self.dul = _DUL(self)

    def _run_reactor(self) -> None:
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            # send_*() from a handler pauses the reactor so that it does not take their responses
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, message = messages.get(timeout=_TICK)
            except queue.Empty:
                context_id, message = None, None
            if message:
                self._serve_request(message, context_id)
                continue  # the checks below cost more than the next message is likely to take
            if self._checks_end_association():
                return

    def _checks_end_association(self) -> bool:
        """pynetdicom's end-of-loop checks: release, abort, a dead DUL, the network timeout."""
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return True
        return False


class _RequestHandler(RequestHandler):
    def handle(self) -> None:
        """On a TLS listener, shake hands here, in the connection's own thread, with a time limit."""
        context = self.server.ssl_context
        if context is not None:
            try:
                self.request = _server_handshake(context, self.request)
            except (OSError, ValueError) as exc:
                logger.warning("TLS handshake with %s failed: %s", self.client_address[0], exc)
                self.server.shutdown_request(self.request)
                return
        super().handle()

    def _create_association(self) -> Association:
        """pynetdicom's acceptor set-up, with the classes above."""
        assoc = _Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(_Socket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.dul._stores.max_data_set_bytes = self.server.max_data_set_bytes
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def _server_handshake(context: ssl.SSLContext, client: socket.socket) -> ssl.SSLSocket:
    """The TLS server side of ``client``; a peer speaking plain DICOM is turned away at its first byte."""
    client.settimeout(_HANDSHAKE_SECONDS)
    first = client.recv(1, socket.MSG_PEEK)
    if first != b"\x16":  # a TLS record of type handshake; an A-ASSOCIATE-RQ PDU starts with 0x01
        raise ValueError(f"not a TLS ClientHello (first byte {first.hex() or 'none'}): plain DICOM?")
    secured = context.wrap_socket(client, server_side=True)  # the handshake, within the timeout
    secured.settimeout(None)
    return secured


class _Server(ThreadedAssociationServer):
    #: see ``start_server``
    max_data_set_bytes: int | None = None
    #: see ``start_server``: offered each accepted connection; True when another process took it
    hand_over: Callable[[socket.socket], bool] | None = None
    #: see ``start_server``: called when a connection closes without an association
    closed_unused: Callable[[], None] | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only; TLS is set up in the connection's own thread (``_RequestHandler.handle``).

        pynetdicom shakes hands in the accepting thread, where one peer that never sends a ClientHello
        would stop every other connection from being accepted. A connection ``hand_over`` passed to
        another process is closed here (that process holds its own descriptor) and skipped: socketserver
        ignores a request whose ``get_request`` raises ``OSError``.
        """
        client, address = self.socket.accept()
        if self.hand_over is not None and self.hand_over(client):
            client.close()
            raise OSError("connection handed to another listener process")
        return client, address

    def shutdown_request(self, request: Any) -> None:
        """Close a connection that did not become an association (failed TLS handshake, set-up error)."""
        super().shutdown_request(request)
        if self.closed_unused is not None:
            self.closed_unused()


class _InboxServer(_Server):
    """A listener that takes the connections another process accepted and passed on ``inbox`` (a Unix
    socket; ``dicom_node.listeners``), one descriptor per message. It does not bind: its address is that
    of the process that accepts."""

    inbox: socket.socket  # set on a subclass per server (the constructor binds)

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the TCP socket socketserver made: not used
        self.socket = self.inbox  # serve_forever waits on it

    def server_activate(self) -> None:
        pass

    def get_request(self) -> tuple[socket.socket, Any]:
        _message, descriptors, _flags, _address = socket.recv_fds(self.inbox, 1, 1)
        if not descriptors:  # the accepting process closed its end: it is gone or stopping
            time.sleep(_INBOX_CLOSED_PAUSE)
            raise OSError("the accepting process closed the inbox")
        client = socket.socket(fileno=descriptors[0])
        try:
            client.setblocking(True)
            address = client.getpeername()
        except OSError:
            client.close()
            if self.closed_unused is not None:
                self.closed_unused()
            raise
        return client, address


def start_server(
    ae: Any,
    address: tuple[str, int],
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None = None,
    max_data_set_bytes: int | None = None,
    *,
    hand_over: Callable[[socket.socket], bool] | None = None,
    inbox: socket.socket | None = None,
    closed_unused: Callable[[], None] | None = None,
) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, ...)`` with the event-driven acceptor.

    ``max_data_set_bytes``: a C-STORE data set larger than this is not kept in memory (module docstring).
    ``hand_over(connection)``: offered every accepted connection before anything is read from it; True
    means another process took it (``dicom_node.listeners``). ``inbox``: instead of listening on
    ``address``, take the connections another process passes on this Unix socket (``address`` is then
    only what associations report as the local address). ``closed_unused()``: called for each connection
    that closes without becoming an association (a failed TLS handshake).
    """
    server_class: type[_Server] = _Server
    if inbox is not None:
        server_class = type("_InboxServerOf", (_InboxServer,), {"inbox": inbox})
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=server_class,
        request_handler=_RequestHandler,
    )
    server.max_data_set_bytes = max_data_set_bytes
    server.hand_over = hand_over
    server.closed_unused = closed_unused
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


__all__ = ["start_server"]
