"""Study completion with a real node and DCMTK storescu: every rule, grouping, several associations, growth.

The route's instruction names no structure, so every job has an empty plan and no model runs; the tests
look at the jobs the tracker makes (the embedded worker is not started). Times are short on purpose
(quiet periods of 1-2 s); each assertion on timing leaves room for a loaded machine.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.errors import NodeError
from dicom_node.node import Node
from tests.conftest import node_settings, running_node
from tests.helpers.peers import run_dcmtk, shared_data, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STUDY = "1.2.826.0.1.3680043.8.498.4242.1"
SERIES_A = f"{STUDY}.1"
SERIES_B = f"{STUDY}.2"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.4242.2"


@pytest.fixture(autouse=True)
def _no_embedded_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs stay queued: these tests are about which jobs are made and when, not about running them."""
    monkeypatch.setattr(Node, "_start_worker", lambda self: None)


@pytest.fixture
def make_series(tmp_path: Path):
    """Write instances ``first..first+count-1`` of a series of the real brain MR under new UIDs."""
    sources = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))

    def make(
        series_instance_uid: str, count: int, first: int = 1, study_instance_uid: str = STUDY
    ) -> list[Path]:
        folder = tmp_path / "sent" / series_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for number in range(first, first + count):
            dataset = pydicom.dcmread(sources[number - 1])
            sop_instance_uid = f"{series_instance_uid}.{number}"
            dataset.StudyInstanceUID = study_instance_uid
            dataset.SeriesInstanceUID = series_instance_uid
            dataset.SOPInstanceUID = sop_instance_uid
            dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
            path = folder / f"{number}.dcm"
            dataset.save_as(path)
            paths.append(path)
        return paths

    return make


def settings_for(tmp_path: Path, **completion: Any):
    return node_settings(
        tmp_path / "node",
        routes=[
            {
                "name": "mr",
                "match": {"Modality": "MR"},
                "instruction": "Archive only",  # asks for no tool: an empty plan
                "completion": completion,
            }
        ],
    )


@pytest.fixture
def node_with(tmp_path: Path) -> Iterator[Any]:
    nodes = []

    def start(**completion: Any):
        context = running_node(settings_for(tmp_path, **completion))
        nodes.append(context)
        return context.__enter__()

    yield start
    for context in nodes:
        context.__exit__(None, None, None)


def send(node, files: list[Path]) -> None:
    sent = run_dcmtk(
        "storescu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(node.scp.port), *map(str, files)
    )
    assert sent.returncode == 0, sent.stderr


def jobs(node) -> list:
    return node.index.jobs()


def wait_for_jobs(node, count: int, timeout: float = 15) -> list:
    return wait_until(lambda: len(jobs(node)) >= count and jobs(node), timeout, 0.1, f"{count} job(s)")


def received(node, series_instance_uid: str | None = None) -> list[float]:
    rows = node.index.instances_of_study(STUDY)
    return sorted(
        row["received_at"] for row in rows if series_instance_uid in (None, row["series_instance_uid"])
    )


def reasons(node, study_instance_uid: str = STUDY) -> set[str]:
    """Why the study's series completed (waiting for the record, which follows the job by design)."""
    rows = wait_until(
        lambda: node.index.series_completions(study_instance_uid), 5, 0.1, "the completion record"
    )
    return {row["reason"] for row in rows}


def study_state(node, settled: str = "complete") -> str:
    """The study's state once the sweep that completed it has marked it (after the job and the record)."""
    wait_until(lambda: node.index.study(STUDY)["state"] == settled, 5, 0.1, f"the study marked {settled}")
    return node.index.study(STUDY)["state"]


def test_quiet_period(node_with, make_series) -> None:
    node = node_with(quiet_seconds=1.5, release_hint=False)
    send(node, make_series(SERIES_A, 3))
    [job] = wait_for_jobs(node, 1)
    waited = job["created_at"] - received(node)[-1]
    assert 1.5 <= waited < 4.5
    assert job["series_instance_uid"] == SERIES_A and '"actions": []' in job["plan"]
    assert reasons(node) == {"quiet"}
    assert study_state(node) == "complete"


def test_association_release_shortens_the_wait(node_with, make_series) -> None:
    node = node_with(quiet_seconds=30, release_quiet_seconds=0.5)
    send(node, make_series(SERIES_A, 3))
    [job] = wait_for_jobs(node, 1, timeout=10)
    [released_at] = [
        row["ended_at"] for row in node.index.query("SELECT * FROM associations WHERE outcome='released'")
    ]
    assert 0.5 <= job["created_at"] - released_at < 3.5
    assert reasons(node) == {"release"}


def test_expected_series(node_with, make_series) -> None:
    node = node_with(quiet_seconds=30, release_hint=False, expected_series=2, release_quiet_seconds=0.5)
    send(node, make_series(SERIES_A, 3))
    time.sleep(1.5)
    assert jobs(node) == []  # one series of two: waiting
    send(node, make_series(SERIES_B, 2))
    [job] = wait_for_jobs(node, 1, timeout=10)
    assert 0.5 <= job["created_at"] - received(node)[-1] < 3.5
    assert job["series_instance_uid"] == SERIES_A  # the study's job is on its largest series
    assert reasons(node) == {"expected_series"}


def test_force_complete_a_study_that_never_goes_quiet(node_with, make_series, caplog) -> None:
    node = node_with(quiet_seconds=30, release_hint=False, force_complete_seconds=2)
    files = make_series(SERIES_A, 12)
    started = time.monotonic()
    for path in files:  # one instance per association, about every 0.35 s, for about 4 s
        send(node, [path])
        time.sleep(max(0.0, 0.35 - (time.monotonic() - started) % 0.35))
    first, *later = wait_for_jobs(node, 2, timeout=10)
    times = received(node)
    assert 2 <= first["created_at"] - times[0] < 4.5
    assert any(at > first["created_at"] for at in times), "the study was still receiving"
    assert all(job["series_instance_uid"] == SERIES_A for job in later)  # growth: new jobs, same series
    assert "force-completed 2 s after its first instance while still receiving" in caplog.text


def test_process_now_in_process_and_from_the_command_line(node_with, make_series) -> None:
    node = node_with(quiet_seconds=60, release_hint=False)
    send(node, make_series(SERIES_A, 2))
    [job_id] = node.process_now(STUDY)
    assert node.index.job(job_id)["series_instance_uid"] == SERIES_A
    assert reasons(node) == {"manual"}
    assert node.process_now(STUDY) == []  # nothing new since
    with pytest.raises(NodeError, match="not in the index"):
        node.process_now("1.2.3.4.5")

    send(node, make_series(f"{OTHER_STUDY}.1", 2, study_instance_uid=OTHER_STUDY))
    command = [sys.executable, "-m", "dicom_node.cli", "process-now", "--config", str(node.config_path)]
    requested = subprocess.run(command + [OTHER_STUDY], capture_output=True, text=True, cwd=ROOT)
    assert requested.returncode == 0, requested.stderr
    wait_until(
        lambda: node.index.jobs_of_study(OTHER_STUDY), 10, 0.1, "the job asked for on the command line"
    )
    assert reasons(node, OTHER_STUDY) == {"manual"}
    unknown = subprocess.run(command + ["1.2.3.4.5"], capture_output=True, text=True, cwd=ROOT)
    assert unknown.returncode == 1 and "1.2.3.4.5 is not in the index" in unknown.stderr


def test_group_by_series_completes_each_series_on_its_own_timers(node_with, make_series) -> None:
    node = node_with(quiet_seconds=1.5, release_hint=False, group_by="series")
    send(node, make_series(SERIES_A, 3))
    time.sleep(1.0)
    send(node, make_series(SERIES_B, 2))
    by_series = {job["series_instance_uid"]: job for job in wait_for_jobs(node, 2)}
    assert set(by_series) == {SERIES_A, SERIES_B}
    # series A did not wait for series B's quiet period, as a study-wide timer would have
    assert by_series[SERIES_A]["created_at"] < received(node, SERIES_B)[-1] + 1.5
    assert by_series[SERIES_B]["created_at"] >= received(node, SERIES_B)[-1] + 1.5


def test_a_study_over_two_associations_is_one_job(node_with, make_series) -> None:
    node = node_with(quiet_seconds=10, release_quiet_seconds=1.5)
    files = make_series(SERIES_A, 6)
    send(node, files[:3])
    send(node, files[3:])
    [job] = wait_for_jobs(node, 1, timeout=10)
    delivering = node.index.query(
        "SELECT COUNT(DISTINCT association_id) AS n FROM instances WHERE study_instance_uid=?", (STUDY,)
    )[0]["n"]
    assert delivering == 2
    # the sweep records the completion just after it plans the job
    wait_until(lambda: node.index.series_completions(STUDY), 5, 0.1, "the completion record")
    assert [row["instances"] for row in node.index.series_completions(STUDY)] == [6]
    time.sleep(1.0)
    assert len(jobs(node)) == 1


@pytest.mark.parametrize("on_growth", ["new_job", "reprocess", "ignore"])
def test_a_study_that_grows_after_its_job(node_with, make_series, caplog, on_growth: str) -> None:
    node = node_with(quiet_seconds=1, release_quiet_seconds=0.3, on_growth=on_growth)
    series_a = make_series(SERIES_A, 4)
    series_b = make_series(SERIES_B, 2)
    send(node, series_a + series_b)
    [first] = wait_for_jobs(node, 1)
    assert first["series_instance_uid"] == SERIES_A  # the largest series
    grown = make_series(SERIES_B, 1, first=3)  # B grows to 3 instances, still smaller than A
    send(node, grown)
    if on_growth == "ignore":
        wait_until(
            lambda: [row["instances"] for row in node.index.series_completions(STUDY)] == [4, 3],
            10,
            0.1,
            "series B to complete again",
        )
        assert "on_growth is ignore, no new job" in caplog.text
        assert len(jobs(node)) == 1
        return
    first, second = wait_for_jobs(node, 2)
    # new_job: only the series that changed; reprocess: everything again, so the largest series again
    assert second["series_instance_uid"] == (SERIES_B if on_growth == "new_job" else SERIES_A)
    assert second["job_id"] != first["job_id"]
    # an identical resend of the whole study changes nothing and makes no job
    send(node, series_a + series_b + grown)
    time.sleep(2.5)  # quiet_seconds 1 (0.3 after the release), and room
    assert len(jobs(node)) == 2
    assert node.index.study(STUDY)["state"] == "complete"


@pytest.fixture(autouse=True)
def _tracker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node.tracker")
