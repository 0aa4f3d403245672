"""``medagent ae|destinations|routes|jobs|ask``: the admin CLI on a real configuration file and index.

The study is received by the node's SCP from DCMTK ``storescu``; the C-ECHO peer is a pynetdicom SCP.
The commands run in process through ``dicom_node.cli.main`` (one runs as a real ``medagent`` process
to check the entry point), and their effect is read back from the YAML file and the index.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from config import load_settings
from dicom_node.cli import main
from dicom_node.index import open_index
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.helpers.peers import free_port, run_dcmtk, shared_data

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    config = {
        "node": {"ae_title": "MEDAGENT", "port": free_port(), "storage": str(tmp_path / "var")},
        "sources": [{"ae_title": "STORESCU"}],
        "destinations": [],
        "routes": [],
        "models": {"device": "cpu"},
    }
    path = tmp_path / "node.yaml"
    path.write_text("# the site's node\n" + yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def echo_peer() -> Iterator[int]:
    ae = AE(ae_title="PEER")
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        yield port
    finally:
        server.shutdown()


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ae_add_list_remove(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ("--config", str(config_file))
    assert run(capsys, "ae", "add", "CT01", *config)[0] == 0
    assert run(capsys, "ae", "add", "CT02", "--host", "10.1.2.3", *config)[0] == 0
    code, _, err = run(capsys, "ae", "add", "CT01", *config)
    assert code == 1 and "source 'CT01' exists already" in err
    code, _, err = run(capsys, "ae", "add", "FAR_TOO_LONG_AE_TITLE", *config)
    assert code == 2 and "ae_title:" in err and "16 characters" in err
    code, out, _ = run(capsys, "ae", "list", *config)
    assert code == 0 and "node AE title MEDAGENT" in out and "CT01" in out and "only from 10.1.2.3" in out
    code, out, _ = run(capsys, "ae", "list", "--json", *config)
    assert [s["id"] for s in json.loads(out)["sources"]] == ["STORESCU", "CT01", "CT02@10.1.2.3"]
    assert run(capsys, "ae", "remove", "CT02", "--host", "10.1.2.3", *config)[0] == 0
    code, _, err = run(capsys, "ae", "remove", "NOPE", *config)
    assert code == 1 and "does not exist" in err
    assert [s.ae_title for s in load_settings(config_file, environ={}).sources] == ["STORESCU", "CT01"]
    assert config_file.read_text().startswith("# the site's node")
    assert run(capsys, "check", *config)[0] == 0


def test_destinations_and_routes_for_a_new_pacs(
    config_file: Path, echo_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's recipe: add a PACS, C-ECHO it, route CT studies to it."""
    config = ("--config", str(config_file))
    add = ("destinations", "add", "new-pacs", "--ae-title", "PEER", "--host", "127.0.0.1")
    code, _, err = run(capsys, *add, "--port", "70000", *config)
    assert code == 2 and "port:" in err
    assert run(capsys, *add, "--port", str(echo_peer), *config)[0] == 0
    code, out, _ = run(capsys, "destinations", "echo", "new-pacs", *config)
    assert code == 0 and "C-ECHO succeeded" in out
    code, out, _ = run(capsys, "destinations", "list", *config)
    assert f"new-pacs: PEER at 127.0.0.1:{echo_peer}" in out

    route = (
        "routes",
        "add",
        "ct-to-new-pacs",
        "--match",
        "Modality=CT",
        "--instruction",
        "Segment both lungs",
    )
    code, _, err = run(capsys, *route, "--destination", "nowhere", *config)
    assert code == 2 and "destinations:" in err and "nowhere" in err
    code, _, err = run(capsys, *route, "--match", "Modality", *config)
    assert code == 2 and "match:" in err
    assert run(capsys, *route, "--destination", "new-pacs", "--quiet-seconds", "10", *config)[0] == 0
    code, out, _ = run(capsys, "routes", "list", *config)
    assert "0. ct-to-new-pacs: Modality=CT -> 'Segment both lungs' to ['new-pacs']" in out
    settings = load_settings(config_file, environ={})
    assert (
        settings.routes[0].destinations == ["new-pacs"] and settings.routes[0].completion.quiet_seconds == 10
    )

    code, _, err = run(capsys, "destinations", "remove", "new-pacs", *config)
    assert code == 1 and "used by route" in err
    assert run(capsys, "routes", "remove", "ct-to-new-pacs", *config)[0] == 0
    assert run(capsys, "destinations", "remove", "new-pacs", *config)[0] == 0
    assert load_settings(config_file, environ={}).destinations == []


def test_destinations_echo_fails_clearly_for_a_closed_port_or_a_wrong_ae_title(
    config_file: Path, echo_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ("--config", str(config_file))
    closed = str(free_port())
    assert (
        run(
            capsys,
            "destinations",
            "add",
            "down",
            "--ae-title",
            "PEER",
            "--host",
            "127.0.0.1",
            "--port",
            closed,
            *config,
        )[0]
        == 0
    )
    code, out, _ = run(capsys, "destinations", "echo", "down", "--json", *config)
    result = json.loads(out)
    assert code == 1 and result["success"] is False and "refused" in result["message"].lower()
    wrong = ("destinations", "add", "wrong-ae", "--ae-title", "NOTPEER", "--host", "127.0.0.1")
    assert run(capsys, *wrong, "--port", str(echo_peer), *config)[0] == 0
    code, out, _ = run(capsys, "destinations", "echo", "wrong-ae", *config)
    assert code == 1 and "association rejected" in out and "Called AE title not recognised" in out
    code, _, err = run(capsys, "destinations", "echo", "nowhere", *config)
    assert code == 1 and "destination 'nowhere' does not exist" in err


def test_ask_and_jobs_on_a_received_study(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ("--config", str(config_file))
    code, _, err = run(capsys, "jobs", *config)
    assert code == 1 and "index" in err  # nothing received yet: no index
    settings = load_settings(config_file, environ={})
    scp = StorageSCP(settings, open_index(settings), Spool(settings.node.storage))
    scp.start()
    try:
        files = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))[:3]
        sent = run_dcmtk(
            "storescu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(scp.port), *map(str, files)
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        scp.stop()
    study_instance_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    code, out, err = run(capsys, "ask", study_instance_uid, "What is the modality of this image?", *config)
    assert code == 0, err
    assert "classification" in out and "MR" in out and "job " in out
    assert "answering" in err or "100%" in err  # the progress bar, on stderr
    code, out, _ = run(
        capsys,
        "ask",
        study_instance_uid,
        "What is the modality of this image?",
        "--json",
        "--no-progress",
        *config,
    )
    answer = json.loads(out)
    assert answer["reused"] is True and answer["results"][0]["status"] == "ok"
    code, _, err = run(capsys, "ask", "1.2.3", "What is it?", *config)
    assert code == 1 and "study '1.2.3' does not exist" in err
    code, _, err = run(capsys, "ask", study_instance_uid, "What is it?", "--send-sr", *config)
    assert code == 2 and "destinations:" in err

    code, out, _ = run(capsys, "jobs", *config)
    assert code == 0 and answer["job_id"] in out and "classification" in out
    code, out, _ = run(capsys, "jobs", answer["job_id"], *config)
    assert code == 0 and "thoughts:" in out and "action 0 classification" in out and "answer:" in out
    code, out, _ = run(capsys, "jobs", answer["job_id"], "--json", *config)
    detail = json.loads(out)
    assert detail["answer"]["answer"] == answer["answer"] and detail["actions"][0]["state"] == "ok"
    assert run(capsys, "jobs", "nope", *config)[0] == 1


def test_the_medagent_entry_point_has_the_admin_commands(config_file: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "ae", "list", "--config", str(config_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "STORESCU" in completed.stdout
    from dicom_node.cli import build_parser

    parser = build_parser()
    for command in (
        ["destinations", "list"],
        ["routes", "list"],
        ["jobs"],
        ["ask", "1.2", "q"],
        ["resubmit"],
    ):
        assert callable(parser.parse_args(command).handler), command
