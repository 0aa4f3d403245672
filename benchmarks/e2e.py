"""End-to-end latency: from a study's last instance received by the node to all its results stored in Orthanc.

Run from the repository root: ``.venv/bin/python benchmarks/e2e.py [--studies 4] [--modes embedded,redis1,redis2]``.

A batch of real studies of ../shared/data (``STUDIES``: the chest CT, the CR chest radiograph, the brain MR,
an ultrasound image; ``--studies N`` keeps the first N) is sent to a node (``medagent serve``), one
``storescu`` association per study, one study after the other, as fast as they go. Each route has the
default completion policy (complete 1 s after the sending association is released). The node sends its
results to a private Orthanc 1.10 (the PACS). The batch runs once in each mode, each with a fresh node
storage, a fresh Orthanc and fresh worker processes:

- ``embedded``: ``queue: {mode: embedded}``, the node's own worker process (one task at a time);
- ``redis1``, ``redis2``: ``queue: {mode: redis}`` on Redis 127.0.0.1:6379 database 8 (flushed before and
  after), with one or two ``medagent worker --concurrency 1`` processes beside the node.

Models load when a tool first runs in a worker process (``preload_models: false``, as the embedded worker
does): the LiteMedSAM load (about 4 s on two CPU cores) falls in the CR's grounded_segmentation in each mode.

Where the times come from: the node's index (UNIX seconds, recorded by the node and its workers) for the
last instance received (``instances.received_at``), planning (``jobs.planning_started_at`` to
``created_at``), each action (``actions.started_at`` to ``finished_at``) and the encoding step
(``jobs.encoding_started_at`` to ``encoding_finished_at``: the series loaded again, SEG/SR/SC written and
stored, queued in the outbox); Orthanc's REST API for "stored in Orthanc": a thread follows ``/changes``
every 0.1 s and notes when each result instance first appears. The phases follow each other, so they add
up to the total:

- waiting: last instance received -> the study completed and the planner was asked;
- planning: the planner's call -> the job recorded;
- queue: the job recorded -> its first action started (dispatch, a free worker, the task taken);
- tools: the first action started -> the last one ended; below it each tool's own action (loading the series
  from the spool, the tool's run, its result stored). Actions that run side by side on two workers overlap;
  actions in one chain (always in embedded mode) may wait between them for the worker, busy with another job;
- hand-off: the last action ended -> the encoding step started (the chain's or chord's next task);
- encoding: the encoding step;
- delivery: the encoding step ended -> every result in Orthanc (outbox poll, C-STORE, Orthanc's storage).

The table prints, per study, each phase in seconds for each mode; then, for the batch, how long sending
took and the time from the batch's last instance received to all of its results in Orthanc.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_node.index import Index  # noqa: E402
from tests.helpers.peers import (  # noqa: E402
    Orthanc,
    free_port,
    run_dcmtk,
    shared_data,
    stop_process_group,
    wait_until,
)

REDIS_URL = "redis://127.0.0.1:6379/8"
MEDAGENT = [sys.executable, "-m", "dicom_node.cli"]
KINDS = ("SEG", "SR", "SC")
#: how long one mode may take to deliver the whole batch before the benchmark gives up
BATCH_TIMEOUT = 600


@dataclass(frozen=True)
class Study:
    """A folder of ../shared/data, how storescu sends it, and the route the node runs on it."""

    folder: str
    modality: str
    instruction: str
    storescu_options: tuple[str, ...] = ()


STUDIES = (
    Study("ct_chest_lidc0314", "CT", "Locate both lungs and classify the image"),
    Study("cr_chest_philips_j2k", "CR", "Segment both lungs", ("-xw",)),  # JPEG 2000 as stored
    Study("mr_brain_t1_sag_siemens", "MR", "Classify the image"),
    Study("us_ge_logiq700_rgb", "US", "Classify the image"),
)

MODES = {
    "embedded": ("embedded", 0),
    "redis1": ("redis, 1 worker", 1),
    "redis2": ("redis, 2 workers", 2),
}


def start_logged(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(
            command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_log(process: subprocess.Popen[bytes], log: Path, text: bytes, what: str) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-3000:]}")
        return log.exists() and text in log.read_bytes()

    wait_until(ready, timeout=120, interval=0.2, what=what)


class OrthancArrivals:
    """Follows Orthanc's ``/changes`` every 0.1 s: when each SOP Instance UID first appeared there."""

    def __init__(self, orthanc: Orthanc) -> None:
        self.orthanc = orthanc
        self.seen: dict[str, float] = {}
        self._since = int(orthanc.get("/changes?last")["Last"])
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name="orthanc-arrivals", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            while not self._stopping.wait(0.1):
                while True:
                    changes = self.orthanc.get(f"/changes?since={self._since}&limit=100")
                    now = time.time()
                    for change in changes["Changes"]:
                        if change["ChangeType"] == "NewInstance":
                            tags = self.orthanc.get(change["Path"])["MainDicomTags"]
                            self.seen.setdefault(tags["SOPInstanceUID"], now)
                    self._since = int(changes["Last"])
                    if changes["Done"]:
                        break
        except BaseException as exc:  # reported by the main thread
            self._error = exc

    def arrived(self, sop_instance_uids: list[str]) -> float | None:
        """When the last of ``sop_instance_uids`` (not empty) appeared in Orthanc; None while one is missing."""
        if self._error is not None:
            raise RuntimeError("following Orthanc's changes failed") from self._error
        if any(uid not in self.seen for uid in sop_instance_uids):
            return None
        return max(self.seen[uid] for uid in sop_instance_uids)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)


@dataclass
class StudyTimes:
    """The phases of one study's latency in seconds (see the module docstring), and what it produced."""

    phases: dict[str, float] = field(default_factory=dict)
    tools: dict[str, float] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    state: str = ""
    received_at: float = 0.0
    in_orthanc_at: float = 0.0


@dataclass
class ModeResult:
    studies: dict[str, StudyTimes]
    sending: float
    batch: float


def node_config(folder: Path, orthanc: Orthanc, studies: list[Study], workers: int) -> dict[str, Any]:
    queue: dict[str, Any] = {"mode": "embedded"}
    if workers:
        queue = {"mode": "redis", "broker_url": REDIS_URL, "preload_models": False}
    return {
        "node": {
            "ae_title": "MEDAGENT",
            "port": free_port(),
            "bind": "127.0.0.1",
            "storage": str(folder / "storage"),
        },
        "sources": [{"ae_title": "STORESCU"}],
        "destinations": [
            {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
        ],
        "routes": [
            {
                "name": study.folder,
                "match": {"Modality": study.modality},
                "instruction": study.instruction,
                "destinations": ["pacs"],
            }
            for study in studies
        ],
        "models": {"device": "cpu"},
        "queue": queue,
        "admin": {"port": free_port()},
    }


def send(study: Study, port: int) -> str:
    """C-STORE the study's files to the node with one storescu association; return its Study Instance UID."""
    files = sorted(shared_data(study.folder).glob("*.dcm"))
    sent = run_dcmtk(
        "storescu", *study.storescu_options, "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(port),
        *map(str, files),
    )  # fmt: skip
    if sent.returncode != 0:
        raise RuntimeError(f"storescu {study.folder} failed: {sent.stderr[-2000:]}")
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def study_times(index: Index, study_instance_uid: str, arrivals: OrthancArrivals) -> StudyTimes | None:
    """The phases of a study whose results are all in Orthanc; None while they are not."""
    jobs = index.jobs_of_study(study_instance_uid)
    if len(jobs) != 1 or jobs[0]["state"] not in ("done", "failed"):
        return None
    job = jobs[0]
    if job["encoding_finished_at"] is None:  # its encoding step never ran: its retries were spent
        raise RuntimeError(f"study {study_instance_uid}: job {job['job_id']} failed: {job['error']}")
    outputs = index.outputs(job["job_id"])
    in_orthanc_at = job["encoding_finished_at"]  # a job without results has nothing to deliver
    if outputs:
        in_orthanc_at = arrivals.arrived([row["sop_instance_uid"] for row in outputs])
        if in_orthanc_at is None:
            return None
    received_at = max(row["received_at"] for row in index.instances_of_study(study_instance_uid))
    actions = index.actions(job["job_id"])
    failures = [f"{action['api_name']} {action['state']}" for action in actions if action["state"] != "ok"]
    times = StudyTimes(
        kinds=[kind for kind in KINDS if kind in {row["kind"] for row in outputs}],
        state=", ".join([job["state"], *failures]),
        received_at=received_at,
        in_orthanc_at=in_orthanc_at,
    )
    ran = [a for a in actions if a["started_at"] is not None and a["finished_at"] is not None]
    first_started = min((a["started_at"] for a in ran), default=job["encoding_started_at"])
    last_finished = max((a["finished_at"] for a in ran), default=job["encoding_started_at"])
    for action in ran:
        name = action["api_name"]
        times.tools[name] = times.tools.get(name, 0.0) + action["finished_at"] - action["started_at"]
    times.phases = {
        "waiting": job["planning_started_at"] - received_at,
        "planning": job["created_at"] - job["planning_started_at"],
        "queue": first_started - job["created_at"],
        "tools": last_finished - first_started,
        "hand-off": job["encoding_started_at"] - last_finished,
        "encoding": job["encoding_finished_at"] - job["encoding_started_at"],
        "delivery": in_orthanc_at - job["encoding_finished_at"],
        "total": in_orthanc_at - received_at,
    }
    return times


def run_mode(root: Path, studies: list[Study], workers: int) -> ModeResult:
    """Send the batch to a fresh node with ``workers`` Redis workers (0: embedded) and time every study."""
    root.mkdir(parents=True)
    orthanc = Orthanc(root / "orthanc").start()
    broker = redis.Redis.from_url(REDIS_URL) if workers else None
    started: list[subprocess.Popen[bytes]] = []
    arrivals: OrthancArrivals | None = None
    try:
        config = node_config(root, orthanc, studies, workers)
        config_path = root / "node.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        if broker is not None:
            broker.flushdb()
        for number in range(1, workers + 1):
            log = root / f"worker{number}.log"
            worker = start_logged(
                [*MEDAGENT, "worker", "--config", str(config_path), "--queues", "cpu,gpu",
                 "--concurrency", "1", "--hostname", f"e2e{number}@benchmark"],
                log,
            )  # fmt: skip
            started.append(worker)
            wait_for_log(worker, log, b" ready.", f"worker {number}")
        node_log = root / "node.log"
        node = start_logged(
            [*MEDAGENT, "--log-level", "INFO", "serve", "--config", str(config_path)], node_log
        )
        started.append(node)
        wait_for_log(node, node_log, b"ready on", "the node")
        if not workers:
            wait_for_log(node, root / "storage" / "worker.log", b" ready.", "the embedded worker")
        index = Index(root / "storage" / "index.sqlite3")
        arrivals = OrthancArrivals(orthanc)
        sending_started = time.time()
        uids = {study.folder: send(study, config["node"]["port"]) for study in studies}
        sending = time.time() - sending_started

        def all_in_orthanc() -> dict[str, StudyTimes] | None:
            found = {}
            for name, study_instance_uid in uids.items():
                times = study_times(index, study_instance_uid, arrivals)
                if times is None:
                    return None
                found[name] = times
            return found

        results: dict[str, StudyTimes] = wait_until(
            all_in_orthanc, timeout=BATCH_TIMEOUT, interval=0.5, what="every study's results in Orthanc"
        )
        last_received = max(times.received_at for times in results.values())
        batch = max(times.in_orthanc_at for times in results.values()) - last_received
        return ModeResult(results, sending, batch)
    finally:
        if arrivals is not None:
            arrivals.stop()
        for process in reversed(started):
            stop_process_group(process)
        orthanc.stop()
        if broker is not None:
            broker.flushdb()


PHASE_LABELS = {
    "waiting": "waiting for completion",
    "planning": "planning",
    "queue": "queue (job -> first tool)",
    "tools": "tools (first start -> last end)",
    "hand-off": "hand-off (last tool -> encoding)",
    "encoding": "encoding",
    "delivery": "delivery (-> all in Orthanc)",
    "total": "total",
}


def print_table(studies: list[Study], results: dict[str, ModeResult]) -> None:
    names = [MODES[mode][0] for mode in results]
    width = 46

    def row(label: str, values: list[str]) -> None:
        print(f"{label:{width}}" + "".join(f"{value:>18}" for value in values))

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(
        "\nSeconds from a study's last instance received by the node to all its results in Orthanc"
        f" ({os.cpu_count()} CPUs)\n"
    )
    row("", names)
    for study in studies:
        times = [result.studies[study.folder] for result in results.values()]
        files = len(list(shared_data(study.folder).glob("*.dcm")))
        kinds = [kind for kind in KINDS if any(kind in t.kinds for t in times)]
        print(
            f"\n{study.folder} ({study.modality}, {files} instance(s)): {study.instruction!r} -> {' '.join(kinds)}"
        )
        for phase, label in PHASE_LABELS.items():
            row(f"  {label}", [seconds(t.phases[phase]) for t in times])
            if phase == "tools":
                for tool in sorted({tool for t in times for tool in t.tools}):
                    row(f"    {tool}", [seconds(t.tools.get(tool)) for t in times])
        states = [t.state for t in times]
        if any(state != "done" for state in states):
            row("  job", states)
    print(f"\nbatch of {len(studies)} studies")
    modes = list(results.values())
    row("  sending (storescu, one study after another)", [seconds(mode.sending) for mode in modes])
    row("  its last instance -> all results in Orthanc", [seconds(mode.batch) for mode in modes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--studies", type=int, default=len(STUDIES), help=f"the first N of the {len(STUDIES)} studies"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} (default: all)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and storage folders (printed)")
    arguments = parser.parse_args(argv)
    modes = [mode.strip() for mode in arguments.modes.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not 1 <= arguments.studies <= len(STUDIES):
        parser.error(f"--modes takes {', '.join(MODES)}; --studies 1 to {len(STUDIES)}")
    studies = list(STUDIES[: arguments.studies])
    folder = Path(tempfile.mkdtemp(prefix="medagent-e2e-"))
    results: dict[str, ModeResult] = {}
    try:
        for mode in modes:
            print(f"running {MODES[mode][0]} ...", file=sys.stderr, flush=True)
            results[mode] = run_mode(folder / mode, studies, MODES[mode][1])
    except BaseException:
        print(f"failed; the logs and storage are kept in {folder}", file=sys.stderr)
        raise
    print_table(studies, results)
    if arguments.keep:
        print(f"\nlogs and storage kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
