"""Storage Commitment against Orthanc: the node asks, Orthanc answers on a new association, the node records."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node.commitment import request_commitment
from tests.conftest import node_settings, running_node
from tests.helpers.peers import wait_until

pytestmark = pytest.mark.integration


def test_delivered_objects_are_committed_and_unknown_ones_fail_with_the_reason(
    tmp_path: Path, orthanc
) -> None:
    settings = node_settings(
        tmp_path / "node",
        destinations=[
            {
                "name": "pacs",
                "ae_title": orthanc.ae_title,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "storage_commitment": True,
            }
        ],
    )
    source = tmp_path / "object.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), source)
    dataset = pydicom.dcmread(source)
    with running_node(settings) as node:
        orthanc.add_modality("medagent", settings.node.ae_title, node.scp.port)
        node.index.record_output(
            sop_instance_uid=str(dataset.SOPInstanceUID),
            job_id="job",
            kind="SC",
            sop_class_uid=str(dataset.SOPClassUID),
            path=str(source),
            destinations=["pacs"],
        )
        wait_until(
            lambda: (
                [r["state"] for r in node.index.commitments(str(dataset.SOPInstanceUID))] == ["committed"]
            ),
            timeout=30,
            what="Orthanc's commitment of the delivered object",
        )
        never_sent = "1.2.826.0.1.3680043.8.498.1"
        transaction = request_commitment(
            settings, node.index, settings.destination("pacs"), [(str(dataset.SOPClassUID), never_sent)]
        )
        assert transaction is not None
        wait_until(
            lambda: [r["state"] for r in node.index.commitments(never_sent)] == ["failed"],
            timeout=30,
            what="Orthanc's refusal of an object it never received",
        )
        failed = node.index.commitments(never_sent)[0]
    assert failed["transaction_uid"] == transaction
    assert failed["failure_reason"] == 0x0112  # No such object instance
    assert node.index.deliveries(str(dataset.SOPInstanceUID))[0]["state"] == "delivered"
