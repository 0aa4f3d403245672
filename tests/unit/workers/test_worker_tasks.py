"""The tasks and the pipeline steps they call: idempotent when run twice, retried only for transient errors.

A real MR slice (``ts_mr_siemens_trio_5ts/1.dcm``) is indexed as a job's series; the tasks run eagerly
(``Task.apply``: in this process, retries included) with an app made from the test's settings.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pydicom
import pytest

from agent_core.registry import ToolRegistry
from config import Route
from config.settings import parse_settings
from dicom_node import pipeline
from dicom_node.cli import main as medagent
from dicom_node.index import Index
from tests.helpers.peers import shared_data
from tools.base import Queue, Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.classification import ClassificationTool
from workers import tasks
from workers.app import make_app


class CountingClassification(ClassificationTool):
    """The real header classification, counting its runs."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def run(self, tool_input: ToolInput) -> ToolResult:
        self.runs += 1
        return super().run(tool_input)


class RaisingTool(Tool):
    card = ToolCard("raising", "Always raises.", ("test",), ("MR",), {"type": "object"}, ("text",))

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def run(self, tool_input: ToolInput) -> ToolResult:
        self.runs += 1
        raise OSError(errno.EIO, "a tool's own I/O error is the tool's")


@pytest.fixture
def node(tmp_path: Path):
    """Settings, index and a job with two actions (raising, classification) on a real MR slice."""
    settings = parse_settings(
        {
            "node": {"storage": str(tmp_path)},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
            "queue": {"max_retries": 2, "retry_backoff_seconds": 0.01, "retry_backoff_max_seconds": 0.02},
        },
        environ={},
    )
    index = Index(tmp_path / "index.sqlite3")
    path = shared_data("ts_mr_siemens_trio_5ts") / "1.dcm"
    header = pydicom.dcmread(path, stop_before_pixels=True)
    index.record_instance(
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        modality="MR",
        path=str(path),
        size=path.stat().st_size,
        association_id=None,
        calling_ae_title="STORESCU",
        attributes={"Modality": "MR"},
        route=None,
        quiet_seconds=1,
    )
    plan = {
        "thoughts": "test",
        "actions": [
            {"API_name": "raising", "API_params": {}},
            {"API_name": "classification", "API_params": {}},
        ],
        "value": "test",
    }
    index.create_job(
        job_id="job",
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        route=None,
        instruction="Classify the image",
        destinations=["pacs"],
        plan=plan,
    )
    registry = ToolRegistry([RaisingTool(), CountingClassification()])
    return settings, index, registry


def test_an_action_run_twice_runs_its_tool_once(node) -> None:
    settings, index, registry = node
    classification = registry.get("classification")
    assert pipeline.run_action(settings, index, "job", 1, registry) == "ok"
    stored = Path(settings.node.storage) / "results" / "job" / "action1.json"
    first = stored.read_text()
    assert pipeline.run_action(settings, index, "job", 1, registry) == "ok"  # a redelivered task
    assert classification.runs == 1 and stored.read_text() == first
    assert index.actions("job")[1]["state"] == "ok"
    assert not [p for p in stored.parent.iterdir() if ".part" in p.name]  # no temporary file left


def test_a_tool_error_is_recorded_and_never_raised_even_an_oserror(node) -> None:
    settings, index, registry = node
    assert pipeline.run_action(settings, index, "job", 0, registry) == "failed"
    action = index.actions("job")[0]
    assert action["state"] == "failed" and "a tool's own I/O error" in action["error"]


def test_a_transient_storage_error_is_raised_and_nothing_is_recorded(node, monkeypatch) -> None:
    settings, index, registry = node

    def unreachable(index, job):
        raise OSError(errno.ESTALE, "Stale file handle")

    monkeypatch.setattr(pipeline, "load_job_volume", unreachable)
    with pytest.raises(OSError, match="Stale"):
        pipeline.run_action(settings, index, "job", 1, registry)
    assert not (Path(settings.node.storage) / "results" / "job" / "action1.json").exists()
    assert pipeline.is_transient(OSError(errno.ENOENT, "not there yet"))
    assert not pipeline.is_transient(OSError("broken data stream when reading image file"))  # Pillow's
    assert not pipeline.is_transient(ValueError("bad pixel data"))


def test_finalize_run_twice_keeps_its_uids_and_files_and_queues_each_object_once(node) -> None:
    settings, index, registry = node
    for action_index in (0, 1):
        pipeline.run_action(settings, index, "job", action_index, registry)
    uids = pipeline.finalize_job(settings, index, "job")
    assert uids and index.job("job")["state"] == "done"
    assert "raising" in index.job("job")["error"]
    files = {row["sop_instance_uid"]: Path(row["path"]) for row in index.outputs("job")}
    written = {uid: (path.stat().st_ino, path.stat().st_mtime_ns) for uid, path in files.items()}

    assert pipeline.finalize_job(settings, index, "job") == uids  # a redelivered task: job done already
    index.set_job_state("job", "running")  # a run that died after storing its objects, before the end
    assert pipeline.finalize_job(settings, index, "job") == uids
    assert index.job("job")["state"] == "done"
    assert {uid: (path.stat().st_ino, path.stat().st_mtime_ns) for uid, path in files.items()} == written
    assert [(d["sop_instance_uid"], d["destination"]) for d in index.deliveries()] == [
        (uid, "pacs") for uid in sorted(uids)
    ]


def test_a_job_records_when_it_was_planned_run_and_encoded(node) -> None:
    """The times ``benchmarks/e2e.py`` splits a job's latency by are recorded, in the order they happen."""
    settings, index, registry = node
    study_instance_uid = index.job("job")["study_instance_uid"]
    route = Route(name="mr", match={"Modality": "MR"}, instruction="Classify the image")
    before = time.time()
    (job_id,) = pipeline.plan_study(settings, index, study_instance_uid, route, registry)
    assert pipeline.run_action(settings, index, job_id, 0, registry) == "ok"
    assert pipeline.finalize_job(settings, index, job_id)
    after = time.time()
    job, (action,) = index.job(job_id), index.actions(job_id)
    created = sorted(row["created_at"] for row in index.outputs(job_id))
    assert action["api_name"] == "classification" and created
    times = [
        before,
        job["planning_started_at"],
        job["created_at"],
        action["started_at"],
        action["finished_at"],
        job["encoding_started_at"],
        created[0],
        created[-1],
        job["encoding_finished_at"],
        after,
    ]
    assert times == sorted(times), times
    assert job["updated_at"] == job["encoding_finished_at"] and job["state"] == "done"


def _app(settings):
    app = make_app(settings)
    return app.tasks["medagent.run_action"], app.tasks["medagent.finalize_job"]


def test_the_task_retries_a_transient_error_then_runs(node, monkeypatch) -> None:
    settings, index, registry = node
    monkeypatch.setattr(tasks, "_index", lambda location: index)
    monkeypatch.setattr(tasks, "_registry", lambda models: registry)
    real = pipeline.load_job_volume
    failures = iter([OSError(errno.EIO, "Input/output error")] * 2)

    def flaky(index, job):
        for exc in failures:
            raise exc
        return real(index, job)

    monkeypatch.setattr(pipeline, "load_job_volume", flaky)
    run_action, _ = _app(settings)
    outcome = run_action.apply(args=("job", 1))
    assert outcome.get() == "ok"
    assert registry.get("classification").runs == 1


def test_the_task_records_the_failure_once_its_retries_are_spent(node, monkeypatch) -> None:
    settings, index, registry = node
    monkeypatch.setattr(tasks, "_index", lambda location: index)
    monkeypatch.setattr(tasks, "_registry", lambda models: registry)
    attempts = []

    def unreachable(index, job):
        attempts.append(1)
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    monkeypatch.setattr(pipeline, "load_job_volume", unreachable)
    run_action, finalize_job = _app(settings)
    assert run_action.apply(args=("job", 1)).get() == "failed"
    assert len(attempts) == 1 + settings.queue.max_retries
    action = index.actions("job")[1]
    assert action["state"] == "failed" and "still failing after 2 retries" in action["error"]
    result = json.loads((Path(settings.node.storage) / "results" / "job" / "action1.json").read_text())
    assert result["status"] == "failed" and "Connection reset" in result["error"]
    assert finalize_job.apply(args=("job",)).get() == []
    assert index.job("job")["state"] == "failed"


def test_a_tool_error_is_not_retried_by_the_task(node, monkeypatch) -> None:
    settings, index, registry = node
    monkeypatch.setattr(tasks, "_index", lambda location: index)
    monkeypatch.setattr(tasks, "_registry", lambda models: registry)
    run_action, _ = _app(settings)
    assert run_action.apply(args=("job", 0)).get() == "failed"
    assert registry.get("raising").runs == 1


class LoadRecorder(Tool):
    def __init__(self, name: str, queue: Queue, fails: bool = False) -> None:
        super().__init__()
        self.card = ToolCard(name, name, ("test",), ("CT",), {"type": "object"}, ("text",), queue=queue)
        self.fails, self.loaded = fails, 0

    def load(self) -> None:
        self.loaded += 1
        if self.fails:
            raise FileNotFoundError("weights.pth")

    def run(self, tool_input: ToolInput) -> ToolResult:
        return ToolResult(ToolStatus.OK, engine=self.card.name)


def test_preload_loads_the_weights_of_the_worker_queues_only() -> None:
    cpu, gpu, broken = (
        LoadRecorder("on_cpu", Queue.CPU),
        LoadRecorder("on_gpu", Queue.GPU),
        LoadRecorder("broken", Queue.GPU, fails=True),
    )
    registry = ToolRegistry([cpu, gpu, broken])
    assert tasks.preload_models(registry, ("gpu",)) == ["on_gpu"]
    assert (cpu.loaded, gpu.loaded, broken.loaded) == (0, 1, 1)


def test_medagent_worker_refuses_an_embedded_config_and_unknown_queues(tmp_path: Path, capsys) -> None:
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text(f"node: {{storage: {tmp_path / 'var'}}}\n")
    assert medagent(["worker", "--config", str(embedded)]) == 2
    assert "queue.mode is 'embedded'" in capsys.readouterr().err
    redis_mode = tmp_path / "redis.yaml"
    redis_mode.write_text(
        f"node: {{storage: {tmp_path / 'var'}}}\nqueue: {{mode: redis, broker_url: 'redis://127.0.0.1:6379/7'}}\n"
    )
    assert medagent(["worker", "--config", str(redis_mode), "--queues", "cpu,tpu"]) == 2
    assert "--queues 'cpu,tpu' must name cpu, gpu or both" in capsys.readouterr().err


def _job_like(index: Index, job_id: str, template: str, actions: list[dict]) -> None:
    """Another job on the series of job ``template`` (as a question asked about the study makes)."""
    job = index.job(template)
    index.create_job(
        job_id=job_id,
        study_instance_uid=job["study_instance_uid"],
        series_instance_uid=job["series_instance_uid"],
        route=None,
        instruction="what kind of image is this?",
        destinations=[],
        plan={"thoughts": "test", "actions": actions, "value": "test"},
    )


def test_a_finished_action_on_the_same_series_is_reused_until_the_series_changes(node, caplog) -> None:
    settings, index, registry = node
    classification = registry.get("classification")
    results = Path(settings.node.storage) / "results"
    assert pipeline.run_action(settings, index, "job", 1, registry) == "ok"  # the routed job
    assert classification.runs == 1

    _job_like(index, "asked", "job", [{"API_name": "classification", "API_params": {}}])
    with caplog.at_level("INFO", logger="dicom_node.pipeline"):
        assert pipeline.run_action(settings, index, "asked", 0, registry) == "ok"
    assert classification.runs == 1  # not run again: the routed job's result is reused
    assert "the result of job job reused" in caplog.text
    reused, original = (
        ToolResult.load(results / "asked" / "action0"),
        ToolResult.load(results / "job" / "action1"),
    )
    assert reused.labels == original.labels and reused.engine == original.engine
    (action,) = index.actions("asked")
    assert action["state"] == "ok" and action["engine"] == original.engine

    # other parameters: run
    _job_like(index, "top", "job", [{"API_name": "classification", "API_params": {"top_k": 1}}])
    assert pipeline.run_action(settings, index, "top", 0, registry) == "ok"
    assert classification.runs == 2

    # the series changed after those jobs were planned (here: its instance came again, a new version)
    time.sleep(0.01)
    (row,) = index.instances_of_series(index.job("job")["series_instance_uid"])
    index.record_instance(
        **{key: row[key] for key in ("sop_instance_uid", "sop_class_uid", "study_instance_uid")},
        **{key: row[key] for key in ("series_instance_uid", "modality", "path", "size", "association_id")},
        calling_ae_title="STORESCU",
        attributes=json.loads(row["attributes"]),
        route=None,
        quiet_seconds=1,
    )
    _job_like(index, "later", "job", [{"API_name": "classification", "API_params": {}}])
    assert pipeline.run_action(settings, index, "later", 0, registry) == "ok"
    assert classification.runs == 3


def test_a_tool_whose_card_is_not_reusable_always_runs(node) -> None:
    settings, index, registry = node
    raising = registry.get("raising")
    assert pipeline.run_action(settings, index, "job", 0, registry) == "failed"
    _job_like(index, "again", "job", [{"API_name": "raising", "API_params": {}}])
    assert pipeline.run_action(settings, index, "again", 0, registry) == "failed"
    assert raising.runs == 2 and not RaisingTool.card.reusable and ClassificationTool.card.reusable
