"""The node as a whole: the CLI entry point, study completion, routing, and resuming after a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node.index import Index
from tests.conftest import node_settings, running_node
from tests.helpers.peers import free_port, run_dcmtk, shared_data, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_medagent_serve_starts_answers_echo_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "config" / "node.example.yaml").read_text())
    port = free_port()
    config["node"].update(port=port, storage=str(tmp_path / "var"))
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_until(
            lambda: (
                run_dcmtk(
                    "echoscu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(port), timeout=10
                ).returncode
                == 0
            ),
            timeout=60,
            what="the node to answer C-ECHO",
        )
        assert (tmp_path / "var" / "index.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"ready on 127.0.0.1:{port}" in output


def test_medagent_check_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node: {ae_title: MEDAGENT, port: 70000}\n")
    completed = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert completed.returncode == 2
    assert "node.port" in completed.stderr and "65535" in completed.stderr


def test_study_without_matching_route_is_kept_unprocessed_and_mr_gets_an_honest_empty_plan(
    tmp_path: Path,
) -> None:
    settings = node_settings(
        tmp_path / "node",
        routes=[
            {
                "name": "brain",
                "match": {"Modality": "MR"},
                "instruction": "Segment both lungs",
                "completion": {"quiet_seconds": 1},
            },
        ],
    )
    mr = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))[:5]
    cr = sorted(shared_data("cr_chest_philips_j2k").glob("*.dcm"))
    with running_node(settings) as node:
        for files, syntax in ((mr, "-x="), (cr, "-xw")):  # -xw: propose JPEG 2000, the CR's own syntax
            sent = run_dcmtk(
                "storescu",
                syntax,
                "-aet",
                "STORESCU",
                "-aec",
                "MEDAGENT",
                "127.0.0.1",
                str(node.scp.port),
                *map(str, files),
            )
            assert sent.returncode == 0, sent.stderr
        wait_until(lambda: node.index.jobs("done"), timeout=60, what="the MR job")

        def study_states() -> dict:
            return {row["route"]: row["state"] for row in node.index.query("SELECT * FROM studies")}

        wait_until(
            lambda: "receiving" not in study_states().values(), timeout=30, what="both studies to complete"
        )
        states = study_states()
    assert states == {"brain": "complete", None: "unrouted"}
    job = node.index.jobs()[0]
    assert '"actions": []' in job["plan"] and "does not work on MR" in job["plan"]
    assert node.index.outputs() == []


def test_unfinished_job_is_resumed_when_the_node_starts(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "node")
    index = Index(Path(settings.node.storage) / "index.sqlite3")
    index.create_job(
        job_id="left-over",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        route=None,
        instruction="Segment both lungs",
        destinations=[],
        plan={"thoughts": "nothing to run", "actions": [], "value": "no tool"},
    )
    assert index.job("left-over")["state"] == "queued"
    with running_node(settings) as node:
        wait_until(lambda: node.index.job("left-over")["state"] == "done", timeout=90, what="the resumed job")
    assert os.path.exists(Path(settings.node.storage) / "worker.log")
