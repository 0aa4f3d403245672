"""The outbox: C-STORE every queued result to its destination, retrying with backoff, never dropping one.

A delivery row exists per (object, destination). A transient failure (connection refused, time-out,
0xA7xx) schedules the next try after an exponentially growing wait (``delivery.retry_initial_seconds``
doubling up to ``delivery.retry_max_seconds``); after ``delivery.give_up_after_hours`` of failures, or at
once on a permanent refusal (0xA9xx, 0xCxxx, a SOP class the destination does not accept), the row becomes
``dead``: kept, logged, and resubmittable (``medagent resubmit``). Destinations are served in parallel, so
one that is down or slow never holds up the others.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from config import Destination, Settings
from dicom_node.commitment import request_commitment
from dicom_node.errors import DeliveryFailed
from dicom_node.index import Index

logger = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Compressed syntaxes the outbox may encode to: lossless only, so the object keeps its SOP Instance UID.
LOSSLESS = (
    RLELossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
)
SUCCESS_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)


def proposed_syntaxes(destination: Destination, dataset: Dataset) -> list[str]:
    """Transfer syntaxes to propose for ``dataset``: what the destination accepts, or its own plus LE."""
    own = str(dataset.file_meta.TransferSyntaxUID)
    if destination.transfer_syntaxes:
        return list(destination.transfer_syntaxes)
    return list(dict.fromkeys([own, *UNCOMPRESSED]))


def transcode(dataset: Dataset, accepted: list[UID]) -> Dataset:
    """``dataset`` in one of the ``accepted`` transfer syntaxes; raises ``ValueError`` when impossible.

    Uncompressed syntaxes convert into each other during sending; compressed pixel data is decompressed
    when the peer accepts an uncompressed syntax, else compressed to the first accepted lossless syntax
    pydicom can encode. Neither changes the pixel values, so the SOP Instance UID stays the same.
    """
    own = UID(dataset.file_meta.TransferSyntaxUID)
    if own in accepted or (not own.is_compressed and any(not a.is_compressed for a in accepted)):
        return dataset
    if "PixelData" not in dataset:
        raise ValueError(f"no accepted transfer syntax for an object without pixel data: {accepted}")
    if own.is_compressed:
        dataset.decompress(generate_instance_uid=False)
        if any(not a.is_compressed for a in accepted):
            return dataset
    for syntax in accepted:
        if syntax in LOSSLESS:
            try:
                dataset.compress(syntax, generate_instance_uid=False)
                return dataset
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                logger.debug("cannot encode %s in %s: %s", dataset.SOPInstanceUID, syntax, exc)
    raise ValueError(f"cannot transcode from {own.name} to any of {[a.name for a in accepted]}")


def _accepted_syntaxes(assoc: Association, sop_class_uid: str) -> list[UID]:
    return [
        UID(context.transfer_syntax[0])
        for context in assoc.accepted_contexts
        if context.abstract_syntax == sop_class_uid
    ]


def store_objects(
    settings: Settings, destination: Destination, paths: dict[str, str]
) -> dict[str, DeliveryFailed | None]:
    """C-STORE the files ``{sop_instance_uid: path}`` over one association; ``None`` marks success."""
    datasets = {uid: pydicom.dcmread(path) for uid, path in paths.items()}
    ae = AE(ae_title=settings.node.ae_title)
    for name in ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, name, settings.delivery.timeout_seconds)
    ae.maximum_pdu_size = settings.node.max_pdu_size
    syntaxes_by_class: dict[str, list[str]] = defaultdict(list)
    for dataset in datasets.values():
        for syntax in proposed_syntaxes(destination, dataset):
            if syntax not in syntaxes_by_class[str(dataset.SOPClassUID)]:
                syntaxes_by_class[str(dataset.SOPClassUID)].append(syntax)
    contexts = [
        build_context(sop_class, syntaxes) for sop_class, syntaxes in sorted(syntaxes_by_class.items())
    ]
    assoc = ae.associate(destination.host, destination.port, contexts=contexts, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (peer down or unreachable)"
        return {uid: DeliveryFailed(destination.name, uid, None, reason) for uid in datasets}
    outcome: dict[str, DeliveryFailed | None] = {}
    try:
        for uid, dataset in datasets.items():
            accepted = _accepted_syntaxes(assoc, str(dataset.SOPClassUID))
            if not accepted:
                outcome[uid] = DeliveryFailed(
                    destination.name,
                    uid,
                    0x0122,
                    f"the destination does not accept {UID(dataset.SOPClassUID).name}",
                )
                continue
            try:
                status = assoc.send_c_store(transcode(dataset, accepted))
            except (ValueError, RuntimeError, NotImplementedError) as exc:
                outcome[uid] = DeliveryFailed(destination.name, uid, 0xC000, f"not sendable: {exc}")
                continue
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                outcome[uid] = DeliveryFailed(
                    destination.name, uid, None, "no response (connection lost or time-out)"
                )
            elif code in SUCCESS_STATUSES:
                outcome[uid] = None
            else:
                outcome[uid] = DeliveryFailed(destination.name, uid, code, "refused by the destination")
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for uid in datasets:
        outcome.setdefault(
            uid, DeliveryFailed(destination.name, uid, None, "association ended before sending")
        )
    return outcome


class Outbox:
    """Delivers due rows of the ``deliveries`` table; one call of ``deliver_due`` is one sweep."""

    def __init__(self, settings: Settings, index: Index) -> None:
        self.settings = settings
        self.index = index

    def __repr__(self) -> str:
        return f"Outbox(destinations={[d.name for d in self.settings.destinations]})"

    def update_settings(self, settings: Settings) -> None:
        """Use new destinations and delivery settings from the next sweep on (the admin API)."""
        self.settings = settings

    def next_attempt(self, attempts: int, now: float) -> float:
        policy = self.settings.delivery
        return now + min(policy.retry_initial_seconds * (2**attempts), policy.retry_max_seconds)

    def deliver_due(self, now: float | None = None) -> int:
        """Try every due delivery once, each destination in its own thread; return how many arrived."""
        now = time.time() if now is None else now
        by_destination: dict[str, dict[str, sqlite3.Row]] = defaultdict(dict)
        for row in self.index.due_deliveries(now):
            by_destination[row["destination"]][row["sop_instance_uid"]] = row
        if not by_destination:
            return 0
        with ThreadPoolExecutor(max_workers=len(by_destination), thread_name_prefix="outbox") as pool:
            counts = pool.map(lambda item: self._deliver_to(item[0], item[1], now), by_destination.items())
            return sum(counts)

    def _deliver_to(self, name: str, rows: dict[str, sqlite3.Row], now: float) -> int:
        destination: Destination | None
        try:
            destination = self.settings.destination(name)
        except KeyError:
            destination = None
            outcome: dict[str, DeliveryFailed | None] = {
                uid: DeliveryFailed(name, uid, 0xC000, f"destination '{name}' is not configured")
                for uid in rows
            }
        else:
            try:
                outcome = store_objects(
                    self.settings, destination, {uid: row["path"] for uid, row in rows.items()}
                )
            except Exception as exc:  # an unreadable file or a network library error must not stop the outbox
                logger.exception("delivery to '%s' failed", name)
                outcome = {
                    uid: DeliveryFailed(name, uid, None, f"{type(exc).__name__}: {exc}") for uid in rows
                }
        for uid, failure in outcome.items():
            self._record(rows[uid], failure, now)
        delivered = [(rows[uid]["sop_class_uid"], uid) for uid, failure in outcome.items() if failure is None]
        if delivered and destination is not None and destination.storage_commitment:
            try:
                request_commitment(self.settings, self.index, destination, delivered)
            except Exception:
                logger.exception("storage commitment request to '%s' failed", name)
        return len(delivered)

    def _record(self, row: sqlite3.Row, failure: DeliveryFailed | None, now: float) -> None:
        uid, name = row["sop_instance_uid"], row["destination"]
        if failure is None:
            self.index.update_delivery(
                uid, name, state="delivered", status=0, error=None, next_attempt_at=now
            )
            logger.info("delivered %s %s to '%s'", row["kind"], uid, name)
            return
        first = row["first_attempt_at"] or now
        expired = now - first >= self.settings.delivery.give_up_after_hours * 3600
        if not failure.transient or expired:
            self.index.update_delivery(
                uid, name, state="dead", status=failure.status, error=str(failure), next_attempt_at=now
            )
            logger.error("dead letter: %s (after %d tries)", failure, row["attempts"] + 1)
            return
        next_at = self.next_attempt(row["attempts"], now)
        self.index.update_delivery(
            uid, name, state="pending", status=failure.status, error=str(failure), next_attempt_at=next_at
        )
        logger.warning("%s; retry in %.0f s", failure, next_at - now)
