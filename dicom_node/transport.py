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
- the socket reads a PDU with ``recv_into`` into one buffer instead of 4 KiB ``recv`` calls.

Timers (ARTIM, the idle timeout) are still checked at least every ``_TICK`` seconds.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import ssl
import threading
from copy import deepcopy
from datetime import datetime
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

_TICK = 0.05  # seconds between timer checks when nothing happens
_HANDSHAKE_SECONDS = 30.0
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
    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only; TLS is set up in the connection's own thread (``_RequestHandler.handle``).

        pynetdicom shakes hands in the accepting thread, where one peer that never sends a ClientHello
        would stop every other connection from being accepted.
        """
        return self.socket.accept()


def start_server(
    ae: Any,
    address: tuple[str, int],
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None = None,
) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, ...)`` with the event-driven acceptor."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=_Server,
        request_handler=_RequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


__all__ = ["start_server"]
