"""The admin REST API of a running node, over HTTP on loopback, against real peers.

One node runs for the module (its API on a free port, its configuration in a YAML file). Changes made
through the API are checked three ways: the answer, the YAML file read back (``load_settings``), and the
running node's behaviour towards real DICOM peers (DCMTK ``echoscu``/``storescu`` as senders, a
pynetdicom Storage SCP as the PACS), without a restart.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicom_node.admin.service import AdminService
from tests.helpers.admin_node import AdminNode, admin_node
from tests.helpers.peers import free_port, run_dcmtk, shared_data, wait_until

pytestmark = pytest.mark.integration
TOKEN = "admin-api-test-token-7f3a9c"
WRONG_TOKEN = "admin-api-wrong-token-000000"
MODALITY_QUESTION = "What is the modality of this image?"


class PeerSCP:
    """A pynetdicom Storage and Verification SCP standing in for the PACS; keeps what it receives."""

    def __init__(self, ae_title: str = "PEER") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _store(self, event: evt.Event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminNode]:
    with admin_node(
        tmp_path_factory.mktemp("admin-api"),
        TOKEN,
        delivery_timeout_seconds=10,
        client_timeout_seconds=120,
        comment="written by the admin API test",
    ) as running:
        yield running


@pytest.fixture
def peer() -> Iterator[PeerSCP]:
    server = PeerSCP()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chest_ct(admin: AdminNode) -> str:
    """The chest CT of ../shared/data sent to the node by DCMTK storescu; its Study Instance UID."""
    files = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))
    study_instance_uid = storescu(admin.dicom_port(), files)
    wait_until(
        lambda: len(admin.node.index.instances_of_study(study_instance_uid)) == len(files),
        30,
        what="the CT indexed",
    )
    return study_instance_uid


def storescu(port: int, files: list[Path]) -> str:
    """Send ``files`` (one study) to the node from STORESCU with DCMTK storescu; their Study Instance UID."""
    sent = run_dcmtk(
        "storescu",
        "-aet",
        "STORESCU",
        "-aec",
        "MEDAGENT",
        "127.0.0.1",
        str(port),
        *map(str, files),
    )
    assert sent.returncode == 0, sent.stderr
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def echoscu(port: int, calling: str = "STORESCU", called: str = "MEDAGENT") -> bool:
    return (
        run_dcmtk("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), timeout=30).returncode
        == 0
    )


def text_values(dataset: pydicom.Dataset) -> Iterator[str]:
    """Every TextValue in an SR's content tree."""
    for item in dataset.get("ContentSequence", []):
        if "TextValue" in item:
            yield str(item.TextValue)
        yield from text_values(item)


def field_of(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 422, response.text
    return [item["loc"] for item in response.json()["detail"]]


# -- authentication -------------------------------------------------------------------------------------------


PROTECTED = [
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/config/ae"),
    ("PUT", "/config/ae"),
    ("GET", "/config/sources"),
    ("POST", "/config/sources"),
    ("DELETE", "/config/sources/STORESCU"),
    ("GET", "/config/destinations"),
    ("GET", "/config/destinations/pacs/cecho"),
    ("POST", "/config/routes"),
    ("GET", "/studies"),
    ("POST", "/studies/1.2.3/process"),
    ("POST", "/studies/1.2.3/ask"),
    ("GET", "/jobs"),
    ("GET", "/jobs/abc"),
    ("POST", "/jobs/abc/resubmit"),
    ("GET", "/associations"),
]


def test_health_needs_no_token_and_every_other_route_does(admin: AdminNode) -> None:
    anonymous = httpx.Client(base_url=str(admin.client.base_url), timeout=30)
    health = anonymous.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["scp_listening"]
    for method, path in PROTECTED:
        for headers in ({}, {"Authorization": f"Bearer {WRONG_TOKEN}"}, {"Authorization": f"Basic {TOKEN}"}):
            response = anonymous.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
    assert admin.client.get("/openapi.json").json()["info"]["title"] == "MedAgent Node admin API"
    assert admin.settings().sources[0].ae_title == "STORESCU"  # nothing changed by the refused requests


def test_tokens_are_never_logged(admin: AdminNode, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        admin.client.get("/config/ae")
        admin.client.get("/config/sources", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
        admin.client.post("/config/sources", json={"ae_title": "LOGGED1"})
        admin.client.delete("/config/sources/LOGGED1")
        time.sleep(0.3)
    access = [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]
    assert any("GET /config/ae" in line and "200" in line for line in access), access
    assert any("GET /config/sources" in line and "401" in line for line in access), access
    assert TOKEN not in caplog.text and WRONG_TOKEN not in caplog.text
    assert TOKEN not in (admin.node.storage / "effective-config.yaml").read_text()


def test_without_a_token_the_api_is_not_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dicom_node.node import Node
    from tests.conftest import node_settings

    node = Node(node_settings(tmp_path / "node", admin={"port": free_port()}))
    service = AdminService(node, None)
    with caplog.at_level(logging.WARNING):
        service.start()
    try:
        assert service.port is None and service.app is None
        assert "admin API not started: no token" in caplog.text
    finally:
        service.stop()


def test_an_admin_port_in_use_stops_the_start(tmp_path: Path) -> None:
    from dicom_node.node import Node
    from tests.conftest import node_settings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        node = Node(node_settings(tmp_path / "node", admin={"port": port, "token": TOKEN}))
        with pytest.raises(OSError):
            AdminService(node, None).start()


# -- configuration ------------------------------------------------------------------------------------------


def test_sources_crud_takes_effect_without_restart_and_is_persisted(admin: AdminNode) -> None:
    port = admin.dicom_port()
    assert not echoscu(port, calling="NEWSRC")
    created = admin.client.post("/config/sources", json={"ae_title": "NEWSRC"})
    assert created.status_code == 201 and created.json()["id"] == "NEWSRC"
    assert admin.client.post("/config/sources", json={"ae_title": "NEWSRC"}).status_code == 409
    assert [s["id"] for s in admin.client.get("/config/sources").json()["sources"]] == ["STORESCU", "NEWSRC"]
    assert admin.client.get("/config/sources/NEWSRC").json()["ae_title"] == "NEWSRC"
    assert [s.ae_title for s in admin.settings().sources] == ["STORESCU", "NEWSRC"]

    assert echoscu(port, calling="NEWSRC")
    mr = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))[0]
    sent = run_dcmtk("storescu", "-aet", "NEWSRC", "-aec", "MEDAGENT", "127.0.0.1", str(port), str(mr))
    assert sent.returncode == 0, sent.stderr
    sop_instance_uid = str(pydicom.dcmread(mr, stop_before_pixels=True).SOPInstanceUID)
    assert admin.node.index.instance(sop_instance_uid) is not None

    moved = admin.client.put("/config/sources/NEWSRC", json={"ae_title": "NEWSRC", "host": "192.0.2.7"})
    assert moved.status_code == 200 and moved.json()["id"] == "NEWSRC@192.0.2.7"
    assert not echoscu(port, calling="NEWSRC")  # now only from 192.0.2.7
    assert admin.client.get("/config/sources/NEWSRC").status_code == 404
    assert admin.client.delete("/config/sources/NEWSRC@192.0.2.7").status_code == 204
    assert admin.client.delete("/config/sources/NEWSRC@192.0.2.7").status_code == 404
    assert [s.ae_title for s in admin.settings().sources] == ["STORESCU"]

    assert field_of(admin.client.post("/config/sources", json={"ae_title": "X" * 17})) == [
        ["body", "ae_title"]
    ]
    assert field_of(admin.client.post("/config/sources", json={"ae_title": "A", "host": "not a host"})) == [
        ["body", "host"]
    ]
    assert field_of(admin.client.post("/config/sources", json={"ae_title": "A", "colour": 1})) == [
        ["body", "colour"]
    ]
    rejected = admin.client.get("/associations", params={"outcome": "rejected", "calling_ae_title": "NEWSRC"})
    assert rejected.status_code == 200 and len(rejected.json()["associations"]) >= 2
    assert all(item["outcome"] == "rejected" for item in rejected.json()["associations"])


def test_destinations_crud_and_cecho_against_a_real_peer(admin: AdminNode, peer: PeerSCP) -> None:
    body = {"name": "peer-pacs", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port}
    assert admin.client.post("/config/destinations", json=body).status_code == 201
    assert admin.client.post("/config/destinations", json=body).status_code == 409
    assert admin.client.get("/config/destinations/peer-pacs").json()["port"] == peer.port
    echo = admin.client.get("/config/destinations/peer-pacs/cecho").json()
    assert echo["success"] is True and echo["status"] == 0, echo

    closed = free_port()
    assert (
        admin.client.put("/config/destinations/peer-pacs", json={**body, "port": closed}).status_code == 200
    )
    assert admin.settings().destination("peer-pacs").port == closed
    failed = admin.client.get("/config/destinations/peer-pacs/cecho").json()
    assert failed["success"] is False and failed["status"] is None
    assert f"127.0.0.1:{closed}" in failed["message"] and "refused" in failed["message"].lower()

    assert field_of(admin.client.put("/config/destinations/peer-pacs", json={**body, "name": "other"})) == [
        ["body", "name"]
    ]
    assert field_of(admin.client.post("/config/destinations", json={**body, "name": "x", "port": 70000})) == [
        ["body", "port"]
    ]
    assert field_of(
        admin.client.post("/config/destinations", json={**body, "name": "x", "transfer_syntaxes": ["1.2.3"]})
    ) == [["body", "transfer_syntaxes"]]
    assert admin.client.get("/config/destinations/nowhere").status_code == 404
    assert admin.client.get("/config/destinations/nowhere/cecho").status_code == 404
    assert admin.client.delete("/config/destinations/peer-pacs").status_code == 204
    assert admin.settings().destinations == []


def test_routes_crud_routing_and_process_now_without_restart(admin: AdminNode) -> None:
    peer_body = {"name": "route-pacs", "ae_title": "PEER", "host": "127.0.0.1", "port": free_port()}
    assert admin.client.post("/config/destinations", json=peer_body).status_code == 201
    route = {
        "name": "mr-api",
        "match": {"Modality": "MR"},
        "instruction": MODALITY_QUESTION,
        "destinations": [],
        "completion": {"quiet_seconds": 600, "release_hint": False},
    }
    assert admin.client.post("/config/routes", json=route).status_code == 201
    assert admin.client.post("/config/routes", json=route).status_code == 409
    assert field_of(
        admin.client.post("/config/routes", json={**route, "name": "r2", "match": {"NoSuchKeyword": "MR"}})
    ) == [["body", "match"]]
    assert field_of(
        admin.client.post("/config/routes", json={**route, "name": "r2", "destinations": ["nowhere"]})
    ) == [["body", "destinations"]]
    assert field_of(
        admin.client.post("/config/routes", json={**route, "name": "r2", "completion": {"quiet_seconds": 0}})
    ) == [["body", "completion", "quiet_seconds"]]
    first = admin.client.post(
        "/config/routes", params={"position": 0}, json={**route, "name": "first", "match": {"Modality": "XA"}}
    )
    assert first.status_code == 201
    assert [r["name"] for r in admin.client.get("/config/routes").json()["routes"]] == ["first", "mr-api"]
    updated = admin.client.put("/config/routes/mr-api", json={**route, "destinations": ["route-pacs"]})
    assert updated.status_code == 200 and updated.json()["destinations"] == ["route-pacs"]
    assert admin.client.delete("/config/destinations/route-pacs").status_code == 409  # the route sends there
    assert admin.client.put("/config/routes/mr-api", json=route).status_code == 200
    assert admin.client.delete("/config/destinations/route-pacs").status_code == 204
    assert admin.client.delete("/config/routes/first").status_code == 204
    assert [r.name for r in admin.settings().routes] == ["mr-api"]

    files = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))[1:4]
    study_instance_uid = storescu(admin.dicom_port(), files)
    study = admin.client.get(f"/studies/{study_instance_uid}").json()
    assert study["route"] == "mr-api" and study["state"] == "receiving"  # the SCP routed with the new rule
    assert study["series"][0]["attributes"]["Modality"] == "MR"
    assert study_instance_uid in [
        s["study_instance_uid"] for s in admin.client.get("/studies").json()["studies"]
    ]

    processed = admin.client.post(f"/studies/{study_instance_uid}/process")
    assert processed.status_code == 200 and len(processed.json()["job_ids"]) == 1
    job_id = processed.json()["job_ids"][0]
    job = admin.client.get(f"/jobs/{job_id}").json()
    assert (
        job["plan"]["thoughts"]
        and job["plan"]["value"]
        and job["plan"]["actions"][0]["API_name"] == "classification"
    )
    assert job["route"] == "mr-api" and job["instruction"] == MODALITY_QUESTION
    done = wait_until(
        lambda: (j := admin.client.get(f"/jobs/{job_id}").json())["state"] in ("done", "failed") and j,
        timeout=150,
        interval=0.5,
        what="the embedded worker to run the job",
    )
    assert done["state"] == "done", done
    action = done["actions"][0]
    assert (
        action["state"] == "ok" and action["started_at"] <= action["finished_at"] and action["seconds"] >= 0
    )
    assert action["result"]["labels"] and done["outputs"] and {o["kind"] for o in done["outputs"]} == {"SR"}
    assert job_id in [j["job_id"] for j in admin.client.get("/jobs", params={"state": "done"}).json()["jobs"]]
    assert admin.client.get("/jobs", params={"study_instance_uid": "1.2.3"}).json()["jobs"] == []
    assert admin.client.post(f"/studies/{study_instance_uid}/process").json()["job_ids"] == []  # nothing new
    assert admin.client.post("/studies/1.2.3/process").status_code == 404
    assert admin.client.get("/studies/1.2.3").status_code == 404
    assert admin.client.get("/jobs/nope").status_code == 404
    assert admin.client.delete("/config/routes/mr-api").status_code == 204
    assert admin.client.get("/config/routes/mr-api").status_code == 404


def test_node_ae_title_and_port_change_while_running(admin: AdminNode) -> None:
    old_port = admin.dicom_port()
    assert admin.client.get("/config/ae").json() == {
        "ae_title": "MEDAGENT",
        "port": old_port,
        "bind": "127.0.0.1",
        "listening_port": old_port,
    }
    new_port = free_port()
    changed = admin.client.put("/config/ae", json={"ae_title": "MEDAGENT2", "port": new_port})
    assert changed.status_code == 200 and changed.json()["listening_port"] == new_port
    try:
        assert echoscu(new_port, called="MEDAGENT2")
        assert not echoscu(new_port, called="MEDAGENT")
        assert not echoscu(old_port, called="MEDAGENT2")
        node = admin.settings().node
        assert (node.ae_title, node.port) == ("MEDAGENT2", new_port)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            busy = taken.getsockname()[1]
            before = admin.config_file.read_bytes()
            refused = admin.client.put("/config/ae", json={"ae_title": "MEDAGENT3", "port": busy})
            assert refused.status_code == 409 and f"127.0.0.1:{busy}" in refused.json()["detail"]
            assert admin.config_file.read_bytes() == before and echoscu(new_port, called="MEDAGENT2")
        assert {
            tuple(loc) for loc in field_of(admin.client.put("/config/ae", json={"ae_title": "", "port": 0}))
        } == {
            ("body", "ae_title"),
            ("body", "port"),
        }
    finally:
        restored = admin.client.put("/config/ae", json={"ae_title": "MEDAGENT", "port": old_port})
        assert restored.status_code == 200
    assert echoscu(old_port)


def test_cli_changes_reach_the_running_node_through_its_file(admin: AdminNode) -> None:
    from dicom_node.cli import main

    port = admin.dicom_port()
    assert not echoscu(port, calling="CLISRC")
    assert main(["ae", "add", "CLISRC", "--config", str(admin.config_file)]) == 0
    wait_until(lambda: echoscu(port, calling="CLISRC"), timeout=20, what="the node to apply the CLI's change")
    assert "CLISRC" in [s["id"] for s in admin.client.get("/config/sources").json()["sources"]]
    assert main(["ae", "remove", "CLISRC", "--config", str(admin.config_file)]) == 0
    wait_until(lambda: not echoscu(port, calling="CLISRC"), timeout=20, what="the node to apply the removal")
    assert admin.config_file.read_text().startswith("# written by the admin API test")


# -- questions, jobs, metrics -------------------------------------------------------------------------------


def test_ask_on_the_chest_ct_answers_and_sends_the_answer_sr(
    admin: AdminNode, chest_ct: str, peer: PeerSCP
) -> None:
    body = {"name": "ask-pacs", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port}
    assert admin.client.post("/config/destinations", json=body).status_code == 201
    try:
        assert admin.client.post("/studies/1.2.3/ask", json={"question": "x"}).status_code == 404
        assert field_of(admin.client.post(f"/studies/{chest_ct}/ask", json={"question": ""})) == [
            ["body", "question"]
        ]
        no_destination = admin.client.post(
            f"/studies/{chest_ct}/ask", json={"question": "x", "send_sr": True}
        )
        assert field_of(no_destination) == [["body", "destinations"]]
        unknown = {"question": "x", "send_sr": True, "destinations": ["nowhere"]}
        assert field_of(admin.client.post(f"/studies/{chest_ct}/ask", json=unknown)) == [
            ["body", "destinations"]
        ]

        asked = admin.client.post(
            f"/studies/{chest_ct}/ask",
            json={"question": MODALITY_QUESTION, "send_sr": True, "destinations": ["ask-pacs"]},
        )
        assert asked.status_code == 200, asked.text
        answer = asked.json()
        assert answer["plan"]["actions"][0]["API_name"] == "classification" and answer["plan"]["thoughts"]
        assert answer["results"][0]["status"] == "ok" and answer["results"][0]["labels"]
        assert "CT" in answer["answer"] and answer["destinations"] == ["ask-pacs"]
        assert len(answer["outputs"]) >= 2  # the classification's SR and the answer SR
        wait_until(lambda: len(peer.received) >= len(answer["outputs"]), 60, what="the outbox to deliver")
        delivered = {str(ds.SOPInstanceUID): ds for ds in peer.received}
        assert set(answer["outputs"]) <= set(delivered)
        answer_sr = delivered[answer["outputs"][-1]]
        assert answer_sr.Modality == "SR" and answer_sr.StudyInstanceUID == chest_ct
        texts = list(text_values(answer_sr))
        assert any(answer["answer"].splitlines()[0] in text for text in texts), texts

        job = admin.client.get(f"/jobs/{answer['job_id']}").json()
        assert job["answer"]["answer"] == answer["answer"] and job["answer"]["question"] == MODALITY_QUESTION
        assert {d["state"] for d in job["deliveries"]} == {"delivered"}
        assert job["route"] is None and job["actions"][0]["state"] == "ok"

        again = admin.client.post(f"/jobs/{answer['job_id']}/resubmit", json={})
        assert again.status_code == 200 and again.json()["queued"] == 0  # no dead letter
        field = field_of(
            admin.client.post(f"/jobs/{answer['job_id']}/resubmit", json={"destination": "nowhere"})
        )
        assert field == [["body", "destination"]]
        assert admin.client.post("/jobs/nope/resubmit", json={}).status_code == 404
        count = len(peer.received)
        resent = admin.client.post(
            f"/jobs/{answer['job_id']}/resubmit", json={"include_delivered": True}
        ).json()
        assert resent["queued"] == len(answer["outputs"])
        wait_until(lambda: len(peer.received) >= count + resent["queued"], 60, what="the resubmitted objects")

        later = admin.client.post(
            f"/studies/{chest_ct}/ask", json={"question": "What kind of image is this?", "wait": False}
        )
        assert later.status_code == 202 and later.json()["job_url"] == f"/jobs/{later.json()['job_id']}"
        followed = wait_until(
            lambda: (j := admin.client.get(later.json()["job_url"]).json())["answer"] and j,
            120,
            what="the answer",
        )
        assert followed["state"] == "done" and "CT" in followed["answer"]["answer"]
    finally:
        admin.client.delete("/config/destinations/ask-pacs")


def test_metrics_and_the_association_log(admin: AdminNode, chest_ct: str) -> None:
    text = admin.client.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.text)
        for sample in family.samples
    }
    assert samples[("medagent_scp_up", ())] == 1
    assert samples[("medagent_instances", ())] >= 55
    assert samples[("medagent_associations", (("outcome", "released"),))] >= 1
    assert sum(v for (name, _), v in samples.items() if name == "medagent_studies") >= 1
    log = admin.client.get("/associations", params={"limit": 5}).json()["associations"]
    assert 1 <= len(log) <= 5 and log == sorted(log, key=lambda item: -item["started_at"])
    assert admin.client.get("/associations", params={"limit": 0}).status_code == 422
    study = admin.client.get(f"/studies/{chest_ct}").json()
    assert study["instances"] == 55 and study["series"][0]["instances"] == 55


def test_concurrent_changes_are_all_kept(admin: AdminNode) -> None:
    errors: list[str] = []

    def add(prefix: str) -> None:
        for number in range(4):
            response = admin.client.post("/config/sources", json={"ae_title": f"{prefix}{number}"})
            if response.status_code != 201:
                errors.append(response.text)

    threads = [threading.Thread(target=add, args=(prefix,)) for prefix in ("CA", "CB", "CC")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    titles = {s.ae_title for s in admin.settings().sources}
    assert {f"{p}{n}" for p in ("CA", "CB", "CC") for n in range(4)} <= titles
    for title in sorted(titles - {"STORESCU"}):
        assert admin.client.delete(f"/config/sources/{title}").status_code == 204
