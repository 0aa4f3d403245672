"""The Storage and Verification SCP.

Each received instance is spooled durably and indexed before the SCP answers Success, so an instance
that was acknowledged is never lost. Handlers never raise: they answer a DIMSE status instead.

==========  ===================================================================
0x0000      stored and indexed
0xA700      out of resources: the spool or index could not be written (the sender retries)
0xC210      cannot understand: the data set does not decode or lacks valid UIDs (quarantined)
==========  ===================================================================
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from config import Settings
from dicom_node.index import Index
from dicom_node.routing import indexed_attributes, select_route
from dicom_node.spool import Spool
from dicom_node.uids import is_valid_uid

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210


class StorageSCP:
    """A pynetdicom AE that accepts C-ECHO and C-STORE from the configured sources."""

    def __init__(self, settings: Settings, index: Index, spool: Spool) -> None:
        self.settings = settings
        self.index = index
        self.spool = spool
        self._server: Any = None
        self._association_ids: dict[int, str] = {}
        self._lock = threading.Lock()
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.maximum_pdu_size = self.settings.node.max_pdu_size
        ae.maximum_associations = self.settings.node.max_associations
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = [source.ae_title for source in self.settings.sources]
        ae.require_called_aet = True
        return ae

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        node = self.settings.node
        handlers = [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_RELEASED, self.handle_closed, ["released"]),
            (evt.EVT_ABORTED, self.handle_closed, ["aborted"]),
            (evt.EVT_REJECTED, self.handle_rejected),
        ]
        self._server = self.ae.start_server((node.bind, node.port), block=False, evt_handlers=handlers)
        logger.info("SCP %s listening on %s:%d", node.ae_title, node.bind, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- association audit ----------------------------------------------------------------------------

    def _association_id(self, assoc: Any) -> str:
        with self._lock:
            key = id(assoc)
            if key not in self._association_ids:
                self._association_ids[key] = uuid.uuid4().hex
            return self._association_ids[key]

    def handle_accepted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        try:
            self.index.open_association(
                self._association_id(event.assoc),
                requestor.ae_title,
                event.assoc.acceptor.ae_title,
                f"{requestor.address}:{requestor.port}",
            )
        except sqlite3.Error:
            logger.exception("could not record an accepted association in the audit log")

    def handle_closed(self, event: evt.Event, outcome: str) -> None:
        with self._lock:
            association_id = self._association_ids.pop(id(event.assoc), None)
        if association_id is None:
            return
        try:
            self.index.close_association(association_id, outcome)
        except sqlite3.Error:
            logger.exception("could not record the end of association %s", association_id)

    def handle_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        association_id = uuid.uuid4().hex
        logger.warning(
            "rejected association from AE '%s' at %s (not in sources)", requestor.ae_title, requestor.address
        )
        try:
            self.index.open_association(
                association_id, requestor.ae_title, event.assoc.acceptor.ae_title, requestor.address
            )
            self.index.close_association(association_id, "rejected")
        except sqlite3.Error:
            logger.exception("could not record a rejected association")

    # -- DIMSE ----------------------------------------------------------------------------------------

    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def handle_store(self, event: evt.Event) -> int:
        """Spool and index one instance; answer a status, never raise."""
        try:
            encoded = event.encoded_dataset()
        except Exception:
            logger.exception("could not read the received data set")
            return CANNOT_UNDERSTAND
        try:
            dataset = event.dataset
            study_instance_uid = str(dataset.get("StudyInstanceUID", ""))
            series_instance_uid = str(dataset.get("SeriesInstanceUID", ""))
            modality = dataset.get("Modality")
            attributes = indexed_attributes(dataset)
            route = select_route(self.settings.routes, dataset)
        except Exception as exc:
            reason = f"data set does not decode: {type(exc).__name__}: {exc}"
            logger.warning("C-STORE %s rejected: %s", event.request.AffectedSOPInstanceUID, reason)
            self.spool.quarantine(encoded, reason, str(event.request.AffectedSOPInstanceUID))
            return CANNOT_UNDERSTAND
        sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
        sop_class_uid = str(event.request.AffectedSOPClassUID)
        for name, value in (
            ("StudyInstanceUID", study_instance_uid),
            ("SeriesInstanceUID", series_instance_uid),
            ("SOPInstanceUID", sop_instance_uid),
        ):
            if not is_valid_uid(value):
                reason = f"{name} {value[:80]!r} is not a valid UID"
                logger.warning("C-STORE rejected: %s", reason)
                self.spool.quarantine(encoded, reason, "invalid-uid")
                return CANNOT_UNDERSTAND
        try:
            path = self.spool.store(study_instance_uid, series_instance_uid, sop_instance_uid, encoded)
        except OSError:
            logger.exception("spool write failed for %s", sop_instance_uid)
            return OUT_OF_RESOURCES
        quiet = route.completion.quiet_seconds if route else 5.0
        try:
            self.index.record_instance(
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                study_instance_uid=study_instance_uid,
                series_instance_uid=series_instance_uid,
                modality=str(modality) if modality else None,
                path=str(path),
                size=len(encoded),
                association_id=self._association_id(event.assoc),
                calling_ae_title=event.assoc.requestor.ae_title,
                attributes=attributes,
                route=route.name if route else None,
                quiet_seconds=quiet,
            )
        except sqlite3.Error:
            logger.exception("index write failed for %s", sop_instance_uid)
            return OUT_OF_RESOURCES
        logger.debug("stored %s in study %s", sop_instance_uid, study_instance_uid)
        return SUCCESS
