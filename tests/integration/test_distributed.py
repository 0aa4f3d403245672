"""Distributed execution (issue 7): the node in redis queue mode with two real ``medagent worker`` processes.

The workers take the node's tasks from the real Redis on 127.0.0.1:6379 (database 7, flushed) and share the
node's storage and index, as workers on other machines share a mounted path. Real studies from
``../shared/data`` arrive by DCMTK storescu; results go to a DCMTK storescp that keeps every object it
receives under a name of its own (``+uf``), so an object sent twice would show twice. The tools are the
cheap engines (classical CT grounding, header classification) plus two test tools installed as a
third-party package (``tests/fixtures/distributed_tools``): ``slow_measure``, which takes its time, and
``faulty_tool``, which always raises.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import redis
import yaml

from tests.conftest import node_settings, running_node
from tests.helpers.peers import PEER_ENVIRONMENT, free_port, run_dcmtk, shared_data, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEST_TOOLS = ROOT / "tests" / "fixtures" / "distributed_tools"
REDIS_URL = "redis://127.0.0.1:6379/7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: a task a worker took comes back to the queue this long after the worker died (tools here run < 12 s)
VISIBILITY_TIMEOUT = 15
QUEUE = {
    "mode": "redis",
    "broker_url": REDIS_URL,
    "visibility_timeout_seconds": VISIBILITY_TIMEOUT,
    "retry_backoff_seconds": 0.5,
    "retry_backoff_max_seconds": 4,
    "time_limits": {"slow_measure": 9},
    "time_limit_grace_seconds": 2,
    "preload_models": False,  # the tools used here load nothing; keeps worker start cheap on 2 cores
}
FAST_COMPLETION = {"quiet_seconds": 2, "release_quiet_seconds": 0.5}


def _route(name: str, match: dict[str, str], instruction: str, destinations: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "match": match,
        "instruction": instruction,
        "destinations": destinations,
        "completion": FAST_COMPLETION,
    }


class Worker:
    """A ``medagent worker`` subprocess in a session of its own (its process group is its pid)."""

    def __init__(self, config: Path, name: str, log: Path, runs: Path) -> None:
        self.config, self.name, self.log, self.runs = config, name, log, runs
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        environment = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(TEST_TOOLS), str(ROOT)]),
            MEDAGENT_TEST_RUNS=str(self.runs),
        )
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "worker", "--config", str(self.config)]
                + ["--queues", "cpu,gpu", "--concurrency", "1", "--hostname", f"{self.name}@test"],
                cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: self._ready(offset), timeout=90, what=f"worker {self.name} to be ready")
        return self

    def _ready(self, offset: int) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited: {self.text()[-3000:]}")
        return b" ready." in self.log.read_bytes()[offset:]

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` (alive) belongs to this worker: its main process or a pool process."""
        assert self.process is not None
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole worker, pool processes included, as when its machine dies."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def _write_worker_config(settings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    return path


def _started_at(run: Path) -> int:
    return int(run.stem.split("-")[1])


@dataclass
class Cluster:
    """Two workers on Redis database 7, and the storage they share with the nodes of the tests."""

    storage: Path
    runs: Path
    workers: list[Worker] = field(default_factory=list)

    def settings(self, **sections: Any):
        return node_settings(self.storage, queue=QUEUE, **sections)

    def runs_so_far(self) -> list[Path]:
        """The runs of slow_measure so far, oldest first (each file is named ``<pid>-<monotonic ns>.run``)."""
        return sorted(self.runs.glob("*.run"), key=_started_at)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    folder = tmp_path_factory.mktemp("distributed")
    runs = folder / "runs"
    runs.mkdir()
    cluster = Cluster(storage=folder / "storage", runs=runs)
    config = _write_worker_config(cluster.settings().with_absolute_storage(), folder / "worker.yaml")
    sys.path.insert(0, str(TEST_TOOLS))  # the node of the tests plans the test tools too
    try:
        for name in ("worker1", "worker2"):
            cluster.workers.append(Worker(config, name, folder / f"{name}.log", runs).start())
        yield cluster
    finally:
        for worker in cluster.workers:
            worker.stop()
        sys.path.remove(str(TEST_TOOLS))
        client.flushdb()


@dataclass
class StoreSCP:
    """DCMTK storescp keeping every object it receives, a second copy of one under another name."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    def received(self) -> Counter[str]:
        """How many times each SOP Instance UID was received."""
        uids = Counter()
        for path in self.folder.iterdir():
            if path.is_file():
                uids[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
        return uids


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    folder = tmp_path / "pacs"
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(folder), "+uf", "+xa", str(port)],
        env=PEER_ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(
            lambda: run_dcmtk("echoscu", "-aec", "PACS", "127.0.0.1", str(port), timeout=10).returncode == 0,
            timeout=15,
            what="storescp",
        )
        yield StoreSCP(folder, port, process)
    finally:
        process.terminate()
        process.wait(timeout=15)


def _destination(pacs: StoreSCP) -> dict[str, Any]:
    return {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}


def _send(node, files: list[Path], *options: str) -> str:
    """C-STORE ``files`` to the node with storescu; return their Study Instance UID."""
    sent = run_dcmtk(
        "storescu", *options, "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(node.scp.port),
        *map(str, files),
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _finished_job(node, study_instance_uid: str, timeout: float = 90):
    def finished():
        jobs = node.index.jobs_of_study(study_instance_uid)
        return jobs[0] if jobs and jobs[0]["state"] in ("done", "failed") else None

    return wait_until(finished, timeout=timeout, interval=0.3, what=f"the job of study {study_instance_uid}")


def _all_delivered(node, job_id: str, timeout: float = 60) -> list[str]:
    """Wait until every output of the job is delivered; return their SOP Instance UIDs."""

    def delivered():
        uids = [row["sop_instance_uid"] for row in node.index.outputs(job_id)]
        states = [d["state"] for uid in uids for d in node.index.deliveries(uid)]
        return uids if uids and len(states) == len(uids) and set(states) == {"delivered"} else None

    return wait_until(delivered, timeout=timeout, interval=0.3, what=f"the outputs of job {job_id} delivered")


def _assert_delivered_once(node, job_id: str, pacs: StoreSCP) -> list[str]:
    uids = _all_delivered(node, job_id)
    assert len(uids) == len(set(uids))
    time.sleep(1.0)  # a second sending, if there were one, would arrive now
    received = pacs.received()
    assert {uid: received[uid] for uid in uids} == {uid: 1 for uid in uids}
    assert all(d["attempts"] == 1 for uid in uids for d in node.index.deliveries(uid))
    return uids


def _seg_masks(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(segment labels, frames, referenced source SOP Instance UID of each frame) of a SEG file."""
    seg = pydicom.dcmread(path)
    labels = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    sources = [
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    return labels, seg.pixel_array, sources


def _action_states(node, job_id: str) -> list[tuple[str, str]]:
    return [(row["api_name"], row["state"]) for row in node.index.actions(job_id)]


def test_studies_run_on_two_workers_with_the_results_of_embedded_mode(
    cluster: Cluster, pacs: StoreSCP, tmp_path: Path
) -> None:
    ct = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))
    mr = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))[:5]
    cr = sorted(shared_data("cr_chest_philips_j2k").glob("*.dcm"))
    routes = [
        _route("ct", {"Modality": "CT"}, "Locate both lungs and classify the image", ["pacs"]),
        _route("mr", {"ManufacturerModelName": "Prisma_fit"}, "Classify the image", ["pacs"]),
        _route("cr", {"Modality": "CR"}, "Classify the image", ["pacs"]),
    ]
    settings = cluster.settings(routes=routes, destinations=[_destination(pacs)])
    with running_node(settings) as node:
        assert node._worker is None  # redis mode: the node starts no worker of its own
        studies = {
            "ct": _send(node, ct),
            "mr": _send(node, mr, "-x="),
            "cr": _send(node, cr, "-xw"),
        }
        jobs = {name: _finished_job(node, uid) for name, uid in studies.items()}
        assert {name: job["state"] for name, job in jobs.items()} == dict.fromkeys(studies, "done")
        assert _action_states(node, jobs["ct"]["job_id"]) == [("grounding", "ok"), ("classification", "ok")]
        delivered = {name: _assert_delivered_once(node, job["job_id"], pacs) for name, job in jobs.items()}
        distributed = {row["sop_instance_uid"]: row for row in node.index.outputs(jobs["ct"]["job_id"])}
    assert {row["kind"] for row in distributed.values()} >= {"SEG", "SR"}

    # The same CT through an embedded node (its own worker, its own storage): same UIDs, same masks.
    embedded_settings = node_settings(tmp_path / "embedded", routes=[routes[0] | {"destinations": []}])
    with running_node(embedded_settings) as node:
        uid = _send(node, ct)
        job = _finished_job(node, uid, timeout=120)
        assert job["state"] == "done"
        assert job["job_id"] == jobs["ct"]["job_id"]
        embedded = {row["sop_instance_uid"]: row for row in node.index.outputs(job["job_id"])}
    assert sorted(embedded) == sorted(distributed) == sorted(delivered["ct"])
    (seg_uid,) = [uid for uid, row in embedded.items() if row["sop_class_uid"] == SEG_CLASS]
    labels, frames, sources = _seg_masks(Path(distributed[seg_uid]["path"]))
    embedded_labels, embedded_frames, embedded_sources = _seg_masks(Path(embedded[seg_uid]["path"]))
    assert sorted(labels) == ["left lung", "right lung"]
    assert (labels, sources) == (embedded_labels, embedded_sources)
    assert frames.any() and np.array_equal(frames, embedded_frames)


def test_a_killed_worker_task_is_redelivered_to_the_other_and_the_job_completes_once(
    cluster: Cluster, pacs: StoreSCP
) -> None:
    us = sorted(shared_data("us_philips_cx50_palette").glob("*.dcm"))
    route = _route("us", {"ManufacturerModelName": "CX50"}, "Run slow_measure and classification", ["pacs"])
    settings = cluster.settings(routes=[route], destinations=[_destination(pacs)])
    before = set(cluster.runs_so_far())
    killed: Worker | None = None
    try:
        with running_node(settings) as node:
            study = _send(node, us)
            (first_run,) = wait_until(
                lambda: sorted(set(cluster.runs_so_far()) - before), timeout=60, what="slow_measure to start"
            )
            pid = int(first_run.read_text())
            (killed,) = [w for w in cluster.workers if w.owns(pid)]
            (job,) = node.index.jobs_of_study(study)
            assert node.index.actions(job["job_id"])[0]["state"] == "running"
            killed.kill()  # during the tool run: slow_measure takes 6 s
            assert node.index.actions(job["job_id"])[0]["state"] == "running"
            job = _finished_job(node, study, timeout=VISIBILITY_TIMEOUT + 60)
            runs = sorted(set(cluster.runs_so_far()) - before, key=_started_at)
            survivor = next(w for w in cluster.workers if w is not killed)
            assert len(runs) == 2, f"slow_measure ran {len(runs)} times: {runs}"
            assert survivor.owns(int(runs[1].read_text())), "the task was not taken by the other worker"
            assert job["state"] == "done" and job["error"] is None
            assert _action_states(node, job["job_id"]) == [("slow_measure", "ok"), ("classification", "ok")]
            uids = _assert_delivered_once(node, job["job_id"], pacs)
            assert len(node.index.outputs(job["job_id"])) == len(uids) >= 2
            assert node.index.job(job["job_id"])["state"] == "done"
    finally:
        if killed is not None:
            killed.start()  # the module's other tests keep two workers


def test_a_tool_that_raises_or_overruns_is_recorded_and_the_other_actions_still_deliver(
    cluster: Cluster, pacs: StoreSCP
) -> None:
    """faulty_tool raises; slow_measure stops at its soft time limit (9 s); the one that ignores it is killed
    at the hard limit (9 s + 2 s grace); classification delivers; the job ends once, done with errors."""
    mr = [shared_data("ts_mr_siemens_trio_5ts") / "1.dcm"]
    overrun = {
        "name": "overrun",
        "intent": "classify",
        "keywords": ["overrun"],
        "actions": [
            {"API_name": "faulty_tool", "API_params": {}},
            {"API_name": "slow_measure", "API_params": {"seconds": 30}},
            {"API_name": "slow_measure", "API_params": {"seconds": 30, "ignore_time_limit": True}},
            {"API_name": "classification", "API_params": {}},
        ],
        "value": "Testing what a failing tool does to its job.",
    }
    route = _route("mr", {"ManufacturerModelName": "TrioTim"}, "Classify the image (overrun test)", ["pacs"])
    settings = cluster.settings(
        routes=[route], destinations=[_destination(pacs)], planner={"rules": [overrun]}
    )
    with running_node(settings) as node:
        job = _finished_job(node, _send(node, mr), timeout=120)
        assert job["state"] == "done"
        actions = node.index.actions(job["job_id"])
        assert [(row["api_name"], row["state"]) for row in actions] == [
            ("faulty_tool", "failed"),
            ("slow_measure", "failed"),
            ("slow_measure", "failed"),
            ("classification", "ok"),
        ]
        assert "RuntimeError: faulty_tool has a bug" in actions[0]["error"]
        assert actions[1]["error"] == "the tool ran longer than its time limit of 9 s (queue.time_limits)"
        assert 8 < actions[1]["finished_at"] - actions[1]["started_at"] < 20
        assert actions[2]["error"] == "action 2 (slow_measure) has no result: its task did not end"
        for text in ("faulty_tool has a bug", "time limit of 9 s", "action 2 (slow_measure) has no result"):
            assert text in job["error"]
        uids = _assert_delivered_once(node, job["job_id"], pacs)
        assert {row["kind"] for row in node.index.outputs(job["job_id"])} == {"SR"} and uids
    logs = "".join(w.text() for w in cluster.workers)
    assert logs.count(f"job {job['job_id']} action 0 (faulty_tool) failed") == 1, (
        "a tool error is not retried"
    )
    assert "Hard time limit (11" in logs


class RedisServer:
    """A private redis-server on a free loopback port, persisting to an append-only file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, timeout=20, what="redis-server")
        return self

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def test_jobs_complete_when_redis_stops_during_them_and_comes_back(tmp_path: Path, pacs: StoreSCP) -> None:
    """Redis (a private, persistent one) stops twice: while a tool runs, and when the node dispatches a job."""
    server = RedisServer(tmp_path / "redis").start()
    runs = tmp_path / "runs"
    runs.mkdir()
    routes = [
        _route("us", {"ManufacturerModelName": "LOGIQ 700"}, "Run slow_measure and classification", ["pacs"]),
        _route("mr", {"ManufacturerModelName": "TrioTim"}, "Classify the image", ["pacs"]),
    ]
    settings = node_settings(
        tmp_path / "storage",
        queue=QUEUE | {"broker_url": server.url},
        routes=routes,
        destinations=[_destination(pacs)],
    )
    config = _write_worker_config(settings.with_absolute_storage(), tmp_path / "worker.yaml")
    worker = Worker(config, "outage", tmp_path / "worker.log", runs)
    sys.path.insert(0, str(TEST_TOOLS))
    try:
        worker.start()
        with running_node(settings) as node:
            # 1. Redis stops while slow_measure runs (6 s): the tool ends while Redis is away.
            study = _send(node, sorted(shared_data("us_ge_logiq700_rgb").glob("*.dcm")))
            wait_until(lambda: list(runs.glob("*.run")), timeout=60, what="slow_measure to start")
            server.stop()
            stopped = time.time()
            (job,) = node.index.jobs_of_study(study)
            wait_until(
                lambda: node.index.actions(job["job_id"])[0]["state"] == "ok",
                timeout=30,
                what="slow_measure to end while Redis is away",
            )
            time.sleep(1)
            assert node.index.job(job["job_id"])["state"] == "running"
            server.start()
            restarted = time.time()
            job = _finished_job(node, study, timeout=120)
            assert job["state"] == "done" and job["error"] is None, job["error"]
            assert _action_states(node, job["job_id"]) == [("slow_measure", "ok"), ("classification", "ok")]
            assert stopped < node.index.actions(job["job_id"])[0]["finished_at"] < restarted
            _assert_delivered_once(node, job["job_id"], pacs)

            # 2. Redis is away when the node dispatches a job: the node keeps it and sends it when Redis is back.
            server.stop()
            study = _send(node, [shared_data("ts_mr_siemens_trio_5ts") / "1.dcm"])
            wait_until(lambda: node._undispatched, timeout=60, what="the node to fail to dispatch the job")
            (job,) = node.index.jobs_of_study(study)
            assert job["state"] == "queued"
            server.start()
            job = _finished_job(node, study, timeout=120)
            assert job["state"] == "done" and not node._undispatched
            _assert_delivered_once(node, job["job_id"], pacs)
    finally:
        worker.stop()
        server.stop()
        sys.path.remove(str(TEST_TOOLS))
        shutil.rmtree(tmp_path / "redis", ignore_errors=True)
