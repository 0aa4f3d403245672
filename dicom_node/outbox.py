"""The outbox: C-STORE every queued result to its destination, retrying with backoff, never dropping one.

A delivery row exists per (object, destination). A transient failure (connection refused, time-out,
0xA7xx) schedules the next try after an exponentially growing wait (``delivery.retry_initial_seconds``
doubling up to ``delivery.retry_max_seconds``); after ``delivery.give_up_after_hours`` of failures, or at
once on a permanent refusal (0xA9xx, 0xCxxx), the row becomes ``dead``: kept, logged, and resubmittable.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context

from config import Destination, Settings
from dicom_node.errors import DeliveryFailed
from dicom_node.index import Index

logger = logging.getLogger(__name__)


def store_objects(
    settings: Settings, destination: Destination, paths: dict[str, str]
) -> dict[str, DeliveryFailed | None]:
    """C-STORE the files ``{sop_instance_uid: path}`` over one association; ``None`` marks success."""
    datasets = {uid: pydicom.dcmread(path) for uid, path in paths.items()}
    ae = AE(ae_title=settings.node.ae_title)
    ae.connection_timeout = settings.delivery.timeout_seconds
    ae.acse_timeout = settings.delivery.timeout_seconds
    ae.dimse_timeout = settings.delivery.timeout_seconds
    ae.network_timeout = settings.delivery.timeout_seconds
    ae.maximum_pdu_size = settings.node.max_pdu_size
    contexts = []
    for sop_class_uid in sorted({str(d.SOPClassUID) for d in datasets.values()}):
        syntaxes = sorted(
            {
                str(d.file_meta.TransferSyntaxUID)
                for d in datasets.values()
                if str(d.SOPClassUID) == sop_class_uid
            }
        )
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
        contexts.append(build_context(sop_class_uid, syntaxes))
    outcome: dict[str, DeliveryFailed | None] = {}
    assoc = ae.associate(destination.host, destination.port, contexts=contexts, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (peer down or unreachable)"
        return {uid: DeliveryFailed(destination.name, uid, None, reason) for uid in datasets}
    try:
        for uid, dataset in datasets.items():
            try:
                status = assoc.send_c_store(dataset)
            except (ValueError, RuntimeError) as exc:
                outcome[uid] = DeliveryFailed(destination.name, uid, 0xC000, f"not sendable: {exc}")
                continue
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                outcome[uid] = DeliveryFailed(
                    destination.name, uid, None, "no response (connection lost or time-out)"
                )
            elif code in (0x0000, 0xB000, 0xB007, 0xB006):
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

    def next_attempt(self, attempts: int, now: float) -> float:
        policy = self.settings.delivery
        return now + min(policy.retry_initial_seconds * (2**attempts), policy.retry_max_seconds)

    def deliver_due(self, now: float | None = None) -> int:
        """Try every due delivery once; return how many were delivered."""
        now = time.time() if now is None else now
        by_destination: dict[str, dict[str, object]] = defaultdict(dict)
        for row in self.index.due_deliveries(now):
            by_destination[row["destination"]][row["sop_instance_uid"]] = row
        delivered = 0
        for name, rows in by_destination.items():
            try:
                destination = self.settings.destination(name)
            except KeyError:
                for uid in rows:
                    self._record(
                        rows[uid],
                        DeliveryFailed(name, uid, None, f"destination '{name}' is not configured"),
                        now,
                    )
                continue
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
                delivered += failure is None
        return delivered

    def _record(self, row, failure: DeliveryFailed | None, now: float) -> None:
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
