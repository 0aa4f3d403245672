"""Storage Commitment (Push Model): ask a destination to take responsibility for what it received.

After the outbox delivered objects to a destination with ``storage_commitment: true``, it sends an
N-ACTION (Request Storage Commitment) naming them under a new Transaction UID. The destination answers
asynchronously with an N-EVENT-REPORT on a new association to the node's SCP (IHE RAD-10); the handler
here records, per object, whether the destination committed to it or why not. Event type 1: all
committed; event type 2: some failed (Failed SOP Sequence with a Failure Reason).
"""

from __future__ import annotations

import logging
import time

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from config import Destination, Settings
from dicom_node.index import Index

logger = logging.getLogger(__name__)

#: The well-known SOP Instance UID of the Storage Commitment Push Model.
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110


def request_commitment(
    settings: Settings, index: Index, destination: Destination, objects: list[tuple[str, str]]
) -> str | None:
    """Send an N-ACTION for ``objects`` (SOP Class UID, SOP Instance UID); return the Transaction UID.

    Returns None (and keeps no record) when the destination cannot be asked or refuses: it is logged, and
    the delivery itself stays delivered.
    """
    transaction_uid = generate_uid(prefix=settings.node.uid_prefix)
    request = Dataset()
    request.TransactionUID = transaction_uid
    request.ReferencedSOPSequence = []
    for sop_class_uid, sop_instance_uid in objects:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        request.ReferencedSOPSequence.append(item)
    ae = AE(ae_title=settings.node.ae_title)
    for name in ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, name, settings.delivery.timeout_seconds)
    ae.add_requested_context(StorageCommitmentPushModel)
    # Recorded first: the answer may arrive on another association before this one is released.
    index.record_commitment_request(transaction_uid, destination.name, [uid for _, uid in objects])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    code = None
    if assoc.is_established:
        try:
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE)
            code = int(status.Status) if status and "Status" in status else None
        finally:
            if assoc.is_established:
                assoc.release()
    if code != SUCCESS:
        index.forget_commitment_request(transaction_uid)
        logger.warning("storage commitment request to '%s' failed (status %s)", destination.name, code)
        return None
    logger.info(
        "storage commitment %s requested from '%s' for %d object(s)",
        transaction_uid,
        destination.name,
        len(objects),
    )
    return transaction_uid


def handle_event_report(event: evt.Event, index: Index) -> tuple[int, Dataset | None]:
    """Record a Storage Commitment result (N-EVENT-REPORT); never raises."""
    try:
        report = event.event_information
        transaction_uid = str(report.TransactionUID)
        committed = [str(i.ReferencedSOPInstanceUID) for i in report.get("ReferencedSOPSequence", [])]
        failed = {
            str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0x0110))
            for i in report.get("FailedSOPSequence", [])
        }
        known = index.record_commitment_result(transaction_uid, committed, failed, time.time())
    except Exception:
        logger.exception("storage commitment report could not be read or recorded")
        return PROCESSING_FAILURE, None
    if not known:
        logger.warning("storage commitment report for unknown transaction %s", transaction_uid)
    else:
        logger.info(
            "storage commitment %s: %d committed, %d failed %s",
            transaction_uid,
            len(committed),
            len(failed),
            {uid: f"0x{reason:04X}" for uid, reason in failed.items()},
        )
    return SUCCESS, None
