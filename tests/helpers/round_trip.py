"""Issue 2's round trip, run once per test session and shared by the tests that read its results.

Orthanc (with DICOMweb, so the OHIF checks can read the same study) pushes the real chest CT to a running
node; the node plans "Segment both lungs", runs grounded segmentation and sends SEG, SR and SC back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID

from tests.helpers.peers import Orthanc, shared_data, wait_until

logger = logging.getLogger(__name__)

SEG = UID("1.2.840.10008.5.1.4.1.1.66.4")
COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
RESULT_CLASSES = (SEG, COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE)


@dataclass
class RoundTrip:
    """What the round trip left: the study in Orthanc, the node's results as Orthanc returns them."""

    orthanc: Orthanc
    ct_files: list[Path]
    study_instance_uid: str
    found: dict[str, list[str]]  # SOP Class UID -> Orthanc instance ids in the study
    results: dict[str, Path]  # SOP Class UID -> the result file downloaded from Orthanc
    deliveries: list[dict[str, Any]]  # the node's outbox rows when the results had arrived
    seconds: float


def results_in_orthanc(orthanc: Orthanc, study_instance_uid: str) -> dict[str, list[str]] | None:
    found: dict[str, list[str]] = {}
    for instance in orthanc.instances_of_study(study_instance_uid):
        sop_class = orthanc.get(f"/instances/{instance['ID']}/metadata/SopClassUid").decode()
        found.setdefault(sop_class, []).append(instance["ID"])
    return found if all(k in found for k in RESULT_CLASSES) else None


def chest_ct_round_trip(orthanc: Orthanc, storage: Path) -> RoundTrip:
    from tests.conftest import node_settings, running_node

    ct_files = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))
    settings = node_settings(
        storage / "node",
        destinations=[
            {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
        ],
        routes=[
            {
                "name": "chest-ct",
                "match": {"Modality": "CT"},
                "instruction": "Segment both lungs",
                "destinations": ["pacs"],
                "completion": {"quiet_seconds": 2},
            }
        ],
    )
    started = time.monotonic()
    with running_node(settings) as node:
        orthanc.add_modality("medagent", settings.node.ae_title, node.scp.port)
        for path in ct_files:
            orthanc.upload(path)
        study_instance_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
        orthanc_study = orthanc.request("POST", "/tools/lookup", study_instance_uid.encode())[0]["ID"]
        orthanc.request("POST", "/modalities/medagent/store", orthanc_study.encode())
        found = wait_until(
            lambda: results_in_orthanc(orthanc, study_instance_uid),
            timeout=600,
            interval=2,
            what="SEG, SR and SC from the node in Orthanc",
        )
        deliveries = wait_until(
            lambda: (
                (rows := [dict(r) for r in node.index.deliveries()])
                and all(r["state"] == "delivered" for r in rows)
                and rows
            ),
            timeout=30,
            what="the outbox to record every delivery",
        )
    seconds = time.monotonic() - started
    logger.info("round trip: SEG, SR and SC were in Orthanc %.0f s after the push", seconds)
    results = {}
    for sop_class in RESULT_CLASSES:
        path = storage / f"{sop_class}.dcm"
        path.write_bytes(orthanc.instance_file(found[sop_class][0]))
        results[sop_class] = path
    return RoundTrip(orthanc, ct_files, study_instance_uid, found, results, deliveries, seconds)
