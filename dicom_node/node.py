"""The node: SCP, study tracker, job dispatch, outbox and (in embedded mode) a supervised Celery worker.

One ``Node.start()`` brings up the whole process tree; ``Node.stop()`` takes it down. On start the node
resumes: jobs that did not finish are dispatched again (tasks are idempotent) and pending deliveries are
retried by the outbox.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from agent_core.protocol import Plan
from agent_core.registry import ToolRegistry
from config import Settings
from config.settings import QueueMode
from dicom_node import pipeline
from dicom_node.errors import NodeError
from dicom_node.index import open_index
from dicom_node.listeners import ListenerProcesses
from dicom_node.outbox import Outbox
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from dicom_node.tracker import PlanRequest, sweep

logger = logging.getLogger(__name__)


def _route(settings: Settings, name: str):
    for route in settings.routes:
        if route.name == name:
            return route
    return None


class Node:
    """All long-running parts of the node, in one process (plus the embedded worker)."""

    def __init__(
        self, settings: Settings, poll_seconds: float = 0.5, config_file: str | Path | None = None
    ) -> None:
        """``config_file`` is the YAML file ``settings`` came from: the admin API and CLI edit it, and the
        node applies its changes without a restart (without one, admin changes last until the node stops)."""
        self.settings = settings.with_absolute_storage()
        self.config_file = None if config_file is None else Path(config_file).resolve()
        self.admin = None  # dicom_node.admin.AdminService, made by start()
        self._reconfiguring = threading.Lock()
        self.storage = Path(self.settings.node.storage)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.index = open_index(self.settings)
        self.spool = Spool(self.storage)
        #: helper listener processes beside the SCP (``node.listener_processes`` above 1), or None
        self.listeners = (
            ListenerProcesses(self.settings) if self.settings.node.listener_processes > 1 else None
        )
        self.scp = StorageSCP(
            self.settings,
            self.index,
            self.spool,
            slots=self.listeners.slots if self.listeners else None,
            hand_over=self.listeners.hand_over if self.listeners else None,
        )
        self.outbox = Outbox(self.settings, self.index)
        self.registry = ToolRegistry.default(settings.models)
        self.poll_seconds = poll_seconds
        self._stopping = threading.Event()
        self._listening_since = 0.0  # time before the SCP listened does not count as a quiet period
        self._tracking = threading.Lock()  # one completion sweep at a time (tracker thread, process_now)
        self._threads: list[threading.Thread] = []
        self._worker: subprocess.Popen[bytes] | None = None
        self._app = None
        self._undispatched: dict[str, None] = {}  # jobs the broker could not take yet, oldest first
        self._dispatching = threading.Lock()

    def __repr__(self) -> str:
        return f"Node(ae_title={self.settings.node.ae_title!r}, storage={str(self.storage)!r})"

    @property
    def config_path(self) -> Path:
        return self.storage / "effective-config.yaml"

    def _celery(self):
        if self._app is None:
            from workers.app import make_app

            self._app = make_app(self.settings, sender_only=True)
        return self._app

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.settings.model_dump(mode="json"), sort_keys=False))
        from dicom_node.admin import AdminService

        self.admin = AdminService(self, self.config_file)
        self.admin.start()  # first: an admin port that cannot be bound stops the start before anything runs
        if self.settings.queue.mode is QueueMode.EMBEDDED:
            self._start_worker()
        self.resume()
        self._listening_since = time.time()
        self.scp.start()
        if self.listeners is not None:
            self.listeners.start(self.scp.port, self.scp.tls_port, self._interrupt_listener)
        for target, name in ((self._track, "tracker"), (self._deliver, "outbox")):
            thread = threading.Thread(target=target, name=f"medagent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.queue.mode is QueueMode.EMBEDDED:
            thread = threading.Thread(target=self._supervise, name="medagent-supervisor", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        if self.admin is not None:
            self.admin.stop()
        if self.listeners is not None:
            self.listeners.stop()
        self.scp.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        if self._worker is not None and self._worker.poll() is None:
            self._worker.terminate()
            try:
                self._worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._worker.kill()
                self._worker.wait()

    def reconfigure(self, settings: Settings) -> None:
        """Use new settings without a restart (the admin API and CLI call this through their store).

        Live: sources, routes, the node's AE title, bind and port (SCP); destinations and delivery
        (outbox); routes and completion (tracker); the planner. The rest (storage, TLS, limits, queue,
        index, models, admin) is logged as waiting for a restart. ``OSError`` when the new port cannot be
        bound: nothing changes then.
        """
        settings = settings.with_absolute_storage()
        with self._reconfiguring:
            current = self.settings
            identity = {key: getattr(current.node, key) for key in ("ae_title", "bind", "port")}
            later = [
                name
                for name in ("queue", "index", "models", "admin")
                if getattr(settings, name) != getattr(current, name)
            ]
            if settings.node.model_copy(update=identity) != current.node:
                later.insert(0, "node (other than ae_title, bind, port)")
            self.scp.update_settings(settings)
            if self.listeners is not None:
                self.listeners.update_settings(settings, self.scp.port, self.scp.tls_port)
            self.outbox.update_settings(settings)
            self.settings = settings
            self.config_path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
        if later:
            logger.warning("configuration changed in %s: takes effect at the next start", ", ".join(later))

    def _interrupt_listener(self, pid: int) -> None:
        """A listener process died: close its associations still open in the audit."""
        interrupted = self.index.interrupt_open_associations(
            self.scp.settings.node.ae_title, listener_pid=pid
        )
        if interrupted:
            logger.warning(
                "%d association(s) were open in listener process %d when it died", interrupted, pid
            )

    # -- embedded worker ------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        environment = dict(
            os.environ, MEDAGENT_CONFIG=str(self.config_path), MEDAGENT_PARENT_PID=str(os.getpid())
        )
        command = [
            sys.executable,
            "-m",
            "workers.embedded",
            "worker",
            "--queues",
            "cpu,gpu",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"embedded@{self.settings.node.ae_title}",
        ]
        log = open(self.storage / "worker.log", "ab")
        self._worker = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        logger.info("embedded worker started (pid %d, log %s)", self._worker.pid, self.storage / "worker.log")

    def _supervise(self) -> None:
        while not self._stopping.wait(2.0):
            if self._worker is not None and self._worker.poll() is not None:
                logger.error("embedded worker exited with %s; restarting it", self._worker.returncode)
                self._start_worker()

    # -- jobs -----------------------------------------------------------------------------------------

    #: how long one dispatch waits for an unreachable broker before the job is kept to be sent later
    DISPATCH_RETRY_POLICY = {
        "max_retries": 2,
        "interval_start": 0.5,
        "interval_step": 0.5,
        "interval_max": 1.0,
    }

    def dispatch(self, job_id: str) -> bool:
        """Send the job's tasks to the queue; return whether the broker took them.

        When the broker cannot be reached (Redis down) the job is kept and sent again at each tracker
        sweep until it is taken; it is never lost while the node runs, and ``resume`` covers a restart.
        """
        from kombu.exceptions import OperationalError

        from workers.canvas import dispatch_job

        job = self.index.job(job_id)
        if job is None:
            raise NodeError(f"job {job_id} does not exist")
        plan = Plan.from_json(job["plan"])
        try:
            dispatch_job(
                self._celery(),
                job_id,
                plan,
                self.registry,
                self.settings,
                retry_policy=self.DISPATCH_RETRY_POLICY,
            )
        except (OperationalError, OSError) as exc:
            logger.warning("job %s: the queue cannot take it now (%s); sending it again later", job_id, exc)
            with self._dispatching:
                self._undispatched[job_id] = None
            return False
        with self._dispatching:
            self._undispatched.pop(job_id, None)
        return True

    def dispatch_pending(self) -> int:
        """Send again the jobs the broker could not take; return how many are still waiting."""
        with self._dispatching:
            waiting = list(self._undispatched)
        for job_id in waiting:
            if not self.dispatch(job_id):
                break  # the broker is still away: the rest waits for the next sweep
        with self._dispatching:
            return len(self._undispatched)

    def resume(self) -> None:
        """Dispatch again every job that had not finished when the node last stopped."""
        for state in ("queued", "running"):
            for job in self.index.jobs(state):
                logger.info("resuming job %s (%s)", job["job_id"], state)
                self.dispatch(job["job_id"])

    def process_study(self, request: PlanRequest) -> list[str]:
        """Plan what a completed study (or series) asks for and dispatch the new jobs; return their ids."""
        route = _route(self.settings, request.route)
        if route is None:
            logger.warning(
                "study %s: route '%s' is no longer configured", request.study_instance_uid, request.route
            )
            return []
        job_ids = pipeline.plan_study(
            self.settings,
            self.index,
            request.study_instance_uid,
            route,
            self.registry,
            group_by=request.group_by,
            series_instance_uids=request.series_instance_uids,
            revision=request.revision,
        )
        for job_id in job_ids:
            self.dispatch(job_id)
        return job_ids

    def sweep_studies(self, study_instance_uid: str | None = None) -> list[str]:
        """Complete the due studies (or one study) and plan them now; return the ids of the jobs made."""
        job_ids: list[str] = []

        def process(request: PlanRequest) -> None:
            job_ids.extend(self.process_study(request))

        with self._tracking:
            sweep(
                self.settings,
                self.index,
                process,
                study_instance_uid=study_instance_uid,
                listening_since=self._listening_since,
            )
        return job_ids

    def process_now(self, study_instance_uid: str) -> list[str]:
        """Complete a study now without waiting for its timers, plan it, and return the new job ids.

        Only what is pending is completed: a study that has not changed since it completed gets no new
        job. Another process (``medagent process-now``) asks the same through ``Index.request_processing``;
        the tracker then handles it at its next sweep.
        """
        if not self.index.request_processing(study_instance_uid):
            raise NodeError(f"study {study_instance_uid} is not in the index")
        logger.info("study %s: process now requested", study_instance_uid)
        return self.sweep_studies(study_instance_uid)

    def _track(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.dispatch_pending()
                self.sweep_studies()
            except Exception:
                logger.exception("study tracker sweep failed; retrying")

    def _deliver(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.outbox.deliver_due()
            except Exception:
                logger.exception("outbox sweep failed; retrying")

    def wait(self) -> None:
        """Block until ``stop`` is called (from a signal handler)."""
        while not self._stopping.wait(1.0):
            time.sleep(0)
