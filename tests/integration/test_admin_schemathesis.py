"""Schemathesis against the admin API's own OpenAPI document: no request, valid or not, gets a 5xx.

The app runs in process (ASGI) over a real node of which only the SCP is started (no worker, no
tracker), with a real configuration file and index; every operation gets generated valid (positive) and invalid
(negative) requests with the bearer token, and the operations that take a study or a job also get the
UIDs of ones that exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from config import load_settings
from dicom_node.admin.app import create_app
from dicom_node.admin.config_store import ConfigStore
from tests.helpers.peers import free_port, shared_data

pytestmark = pytest.mark.integration
TOKEN = "schemathesis-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STUDY_UID = "1.2.826.0.1.3680043.8.498.991"
JOB_ID = "0123456789abcdef01234567"
EXAMPLES = 12


@pytest.fixture
def app(tmp_path: Path):
    from dicom_node.node import Node

    config = {
        "node": {"ae_title": "MEDAGENT", "port": free_port(), "storage": str(tmp_path / "var")},
        "sources": [{"ae_title": "STORESCU"}],
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
        "routes": [{"name": "ct", "match": {"Modality": "CT"}, "instruction": "Segment both lungs"}],
        "delivery": {"timeout_seconds": 1},
        "models": {"device": "cpu"},
        "admin": {"port": 0, "token": TOKEN},
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    node = Node(load_settings(path, environ={}), config_file=path)
    sample = next(iter(sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))))
    node.index.record_instance(
        sop_instance_uid=f"{STUDY_UID}.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        study_instance_uid=STUDY_UID,
        series_instance_uid=f"{STUDY_UID}.1",
        modality="MR",
        path=str(sample),
        size=sample.stat().st_size,
        association_id=None,
        calling_ae_title="STORESCU",
        attributes={"Modality": "MR"},
        route=None,
        quiet_seconds=5.0,
    )
    node.index.create_job(
        job_id=JOB_ID,
        study_instance_uid=STUDY_UID,
        series_instance_uid=f"{STUDY_UID}.1",
        route=None,
        instruction="What is the modality of this image?",
        destinations=["pacs"],
        plan={"thoughts": "t", "actions": [{"API_name": "classification", "API_params": {}}], "value": "v"},
    )
    store = ConfigStore(path, settings=node.settings, apply=node.reconfigure, environ={})
    node.scp.start()  # /health answers 503 while the SCP does not listen
    try:
        yield create_app(node, store, TOKEN)
    finally:
        node.scp.stop()


def test_no_generated_request_gets_a_server_error(app) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    failures: list[str] = []
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25, [f"{op.method} {op.path}" for op in operations]
    for operation in operations:
        if (operation.method.upper(), operation.path) == ("PUT", "/config/ae"):
            # the started SCP really moves: valid bodies stay on a free loopback port (DESIGN.md 7)
            body = {"ae_title": "MEDAGENT2", "port": free_port(), "bind": "127.0.0.1"}
            strategies = [
                (GenerationMode.POSITIVE, operation.as_strategy(body=body)),
                (GenerationMode.NEGATIVE, operation.as_strategy(GenerationMode.NEGATIVE)),
            ]
        else:
            strategies = [(mode, operation.as_strategy(mode)) for mode in GenerationMode]
        known = {"job_id": JOB_ID, "study_instance_uid": STUDY_UID}
        names = {parameter.name for parameter in operation.path_parameters}
        if names and names <= set(known) and not operation.path.endswith("/ask"):
            fixed = {name: known[name] for name in names}
            strategies.append((GenerationMode.POSITIVE, operation.as_strategy(path_parameters=fixed)))
        for mode, strategy in strategies:

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:
                nonlocal calls
                response = case.call(headers=AUTH)
                calls += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
                        f" -> {response.status_code}: {response.text[:300]}"
                    )

            try:
                run()
            except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, f"{operation.method} {operation.path}"
    assert failures == []
    assert calls >= 25 * EXAMPLES
