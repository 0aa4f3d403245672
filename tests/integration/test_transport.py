"""The event-driven acceptor's short C-STORE path (``dicom_node.transport``) against pynetdicom's own SCU.

A bare AE (no node) listens with ``start_server``; its ``EVT_C_STORE`` handler records what it was given.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node.transport import _store_response, start_server
from tests.helpers.peers import shared_data, wait_until

pytestmark = pytest.mark.integration


class Acceptor:
    """A listening AE whose C-STORE handler is ``self.answer`` and which keeps each request it got."""

    def __init__(self, max_data_set_bytes: int | None = None) -> None:
        #: SOP Instance UID, data set bytes, whether the handler ran on the DUL thread
        self.received: list[tuple[str, bytes | None, bool]] = []
        self.sizes: list[int] = []  # event.data_set_bytes of each request (the short path sets it)
        self.answer: Callable[[evt.Event], Any] = lambda event: 0x0000
        ae = AE(ae_title="ACCEPTOR")
        ae.maximum_pdu_size = 16384  # a CT slice arrives in about 32 P-DATA-TF PDUs
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context(Verification)
        self.ae = ae
        #: seconds the EVT_ACCEPTED handler takes (the node writes its audit row there)
        self.accepting_seconds = 0.0
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)]
        self.server = start_server(ae, ("127.0.0.1", 0), handlers, max_data_set_bytes=max_data_set_bytes)
        self.port = self.server.server_address[1]

    def _accepted(self, event: evt.Event) -> None:
        time.sleep(self.accepting_seconds)

    def _store(self, event: evt.Event) -> Any:
        on_dul_thread = threading.current_thread() is event.assoc.dul
        data_set = event.request.DataSet
        self.received.append(
            (
                str(event.request.AffectedSOPInstanceUID),
                None if data_set is None else data_set.getvalue(),
                on_dul_thread,
            )
        )
        self.sizes.append(getattr(event, "data_set_bytes", -1))  # -1: pynetdicom's own path
        return self.answer(event)


@pytest.fixture
def acceptor() -> Iterator[Acceptor]:
    peer = Acceptor()
    yield peer
    peer.ae.shutdown()


def associate(port: int) -> Any:
    ae = AE(ae_title="SENDER")
    ae.dimse_timeout = 10
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ACCEPTOR")
    assert assoc.is_established
    return assoc


def ct_slice(number: int) -> Dataset:
    return pydicom.dcmread(sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))[number])


def store_one(port: int, dataset: Dataset) -> Dataset:
    """The status of one C-STORE of ``dataset`` on an association of its own."""
    assoc = associate(port)
    try:
        return assoc.send_c_store(dataset)
    finally:
        assoc.release()


def encoded(dataset: Dataset, implicit: bool = False) -> bytes:
    """``dataset`` as a data set in little endian, explicit VR unless ``implicit``."""
    buffer = pydicom.filebase.DicomFileLike(BytesIO())
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, dataset)
    return buffer.parent.getvalue()


def test_a_ct_slice_in_many_pdus_reaches_the_handler_whole_and_echo_still_works(acceptor) -> None:
    dataset = ct_slice(0)
    assoc = associate(acceptor.port)
    try:
        assert assoc.send_c_echo().Status == 0x0000  # pynetdicom's own path, on the same association
        status = assoc.send_c_store(dataset)
        assert status.Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    ((uid, data, on_dul_thread),) = acceptor.received
    assert uid == dataset.SOPInstanceUID
    assert len(data) > 10 * 16384 and data == encoded(dataset)  # byte for byte, across all the PDUs
    assert on_dul_thread  # the short path ran it, not pynetdicom's association thread


def test_a_request_sent_while_the_acceptor_still_runs_its_accepted_handlers_is_answered(acceptor) -> None:
    # the peer has the A-ASSOCIATE-AC and sends at once; the acceptor's association thread is still in
    # EVT_ACCEPTED: the request must wait for it, not be handled (and its answer dropped) before
    acceptor.accepting_seconds = 1.0
    dataset = ct_slice(2)
    status = store_one(acceptor.port, dataset)
    assert status.Status == 0x0000
    assert [uid for uid, _, _ in acceptor.received] == [dataset.SOPInstanceUID]


def test_a_failure_status_keeps_its_error_comment_and_offending_element(acceptor) -> None:
    def refuse(event: evt.Event) -> Dataset:
        status = Dataset()
        status.Status = 0xA900
        status.ErrorComment = "SOP Instance UID differs"
        status.OffendingElement = [Tag(0x0008, 0x0018)]
        return status

    acceptor.answer = refuse
    status = store_one(acceptor.port, ct_slice(1))
    assert status.Status == 0xA900
    assert status.ErrorComment == "SOP Instance UID differs"
    assert Tag(status.OffendingElement) == Tag(0x0008, 0x0018)


def test_an_exception_in_the_handler_is_answered_c211_and_the_association_goes_on(acceptor) -> None:
    def fail(event: evt.Event) -> int:
        raise RuntimeError("handler bug")

    acceptor.answer = fail
    assoc = associate(acceptor.port)
    try:
        first = assoc.send_c_store(ct_slice(0))
        acceptor.answer = lambda event: 0x0000
        second = assoc.send_c_store(ct_slice(1))
    finally:
        assoc.release()
    assert (first.Status, second.Status) == (0xC211, 0x0000)


def test_the_response_is_the_command_set_pynetdicom_writes() -> None:
    for status, comment in ((0x0000, None), (0xC210, "odd")):
        response = C_STORE()
        response.MessageIDBeingRespondedTo = 7
        response.AffectedSOPClassUID = CTImageStorage
        response.AffectedSOPInstanceUID = "1.2.3.4.5"
        response.Status = status
        response.ErrorComment = comment
        message = C_STORE_RSP()
        message.primitive_to_message(response)
        (pdata,) = message.encode_msg(3, 16384)
        ((context_id, pdv),) = pdata.presentation_data_value_list
        ours = _store_response(3, response)
        # P-DATA-TF: type, reserved, length; one PDV: length, context, control header, the command set
        pdu_type, _, length = struct.unpack(">BBL", ours[:6])
        item_length, our_context, control = struct.unpack(">LBB", ours[6:12])
        assert (pdu_type, length, item_length) == (0x04, len(ours) - 6, len(ours) - 10)
        assert (our_context, control) == (context_id, pdv[0]) == (3, 0x03)
        assert ours[12:] == pdv[1:]


def test_a_command_inside_a_data_set_aborts_the_association(acceptor) -> None:
    assoc = associate(acceptor.port)
    # answered only once the acceptor's association thread runs: from then on its C-STOREs take the short
    # path (before, a request waits in pynetdicom's queue and pynetdicom decodes it, as any other message)
    assert assoc.send_c_echo().Status == 0x0000
    context_id = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage)
    command = Dataset()
    command.AffectedSOPClassUID = CTImageStorage
    command.CommandField = 0x0001
    command.MessageID = 1
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = "1.2.3.4.6"
    command_bytes = encoded(command, implicit=True)

    def pdu(control: int, fragment: bytes) -> bytes:
        item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
        return struct.pack(">BBL", 0x04, 0, len(item)) + item

    socket = assoc.dul.socket
    socket.send(pdu(0x03, command_bytes))  # a C-STORE-RQ, complete
    socket.send(pdu(0x00, b"\x08\x00\x18\x00"))  # the first fragment of its data set
    socket.send(pdu(0x03, command_bytes))  # then a new command before the data set ended
    assert wait_until(lambda: assoc.is_aborted, timeout=10, what="the acceptor to abort")
    assert acceptor.received == []


def test_a_data_set_past_the_limit_is_counted_not_kept() -> None:
    acceptor = Acceptor(max_data_set_bytes=100_000)
    acceptor.answer = lambda event: 0xA701 if event.request.DataSet is None else 0x0000
    small = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # about 39 KB
    large = ct_slice(3)  # about 525 KB, in about 32 PDUs
    try:
        assert store_one(acceptor.port, large).Status == 0xA701
        assert store_one(acceptor.port, small).Status == 0x0000
    finally:
        acceptor.ae.shutdown()
    assert [(uid, data is None) for uid, data, _ in acceptor.received] == [
        (large.SOPInstanceUID, True),
        (small.SOPInstanceUID, False),
    ]
    assert acceptor.sizes == [len(encoded(large)), len(encoded(small))]
