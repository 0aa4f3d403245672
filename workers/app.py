"""The Celery app, configured from the node settings.

Embedded mode uses kombu's filesystem transport under ``<storage>/queue``: no external server, and queued
tasks survive a restart. Redis mode uses ``queue.broker_url`` for the tasks and ``queue.result_backend_url``
(default: the broker) for the results that join a job's parallel actions (a chord). Both run the same tasks.

Both modes acknowledge a task when it ends (``acks_late``), reserve one task at a time per worker process
(prefetch 1), and hand a task whose worker died to another worker: at once when a worker process is killed
(``task_reject_on_worker_lost``), after ``queue.visibility_timeout_seconds`` when the whole worker or its
machine is gone (Redis). Tasks are idempotent (``dicom_node.pipeline``), so a task run twice does no harm.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.backends.redis import RedisBackend
from kombu import Queue

from config import Settings, load_settings
from config.settings import QueueMode

QUEUES = ("cpu", "gpu")

#: how a worker publishes the next task of a chain, or the encoding step, while Redis is away: it retries
#: for about two minutes before the task fails (and Redis redelivers it after the visibility timeout)
WORKER_PUBLISH_RETRY_POLICY = {
    "max_retries": 30,
    "interval_start": 0.5,
    "interval_step": 1.0,
    "interval_max": 5.0,
}


class _NoResultConsumer(RedisBackend.ResultConsumer):
    """Subscribes to no task's result: nothing here waits on one."""

    def consume_from(self, task_id: str) -> None:
        return None

    def cancel_for(self, task_id: str) -> None:
        return None


class DispatchOnlyRedisBackend(RedisBackend):
    """Celery's Redis result backend without the result subscriptions a sender makes for what it sends.

    Nothing waits on a task's result: tasks record their outcome in the index, and a chord is joined by
    the worker that ends its last part (through this backend's stored results). So the node holds no
    pub/sub subscription per dispatched task, and a Redis outage cannot break a result consumer it never
    needed. ``AsyncResult.get`` would wait forever here; no code calls it.
    """

    ResultConsumer = _NoResultConsumer


def broker_settings(settings: Settings, sender_only: bool = False) -> dict[str, object]:
    """The broker and result backend settings of ``settings.queue``.

    ``sender_only``: for the node, which only sends jobs. A worker waits for Redis to store a result (the
    chord of the job needs it); the node gives up at once and keeps the job to send again later.
    """
    queue = settings.queue
    if queue.mode is QueueMode.REDIS:
        visibility = queue.visibility_timeout_seconds
        return {
            "broker_url": queue.broker_url,
            "broker_transport_options": {
                "visibility_timeout": visibility,
                # look for the tasks of dead workers often enough to honour a short visibility timeout
                "unacked_restore_interval": max(1, min(10, int(visibility // 4))),
                "unacked_restore_throttle": 1,
            },
            "result_backend": f"{__name__}:DispatchOnlyRedisBackend+{queue.result_backend_url or queue.broker_url}",
            "result_expires": 24 * 3600,
            # a result that cannot be stored while Redis is away is retried, not lost with its chord
            "result_backend_always_retry": not sender_only,
            "result_backend_max_retries": 120,
            "result_backend_max_sleep_between_retries_ms": 5000,
            "task_ignore_result": False,  # a chord joins on its header's results
            "task_publish_retry_policy": WORKER_PUBLISH_RETRY_POLICY,
            "broker_connection_max_retries": None,  # a worker waits for Redis however long it is away
        }
    folder = (Path(settings.node.storage) / "queue").resolve()
    for name in ("messages", "control"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        },
        "task_ignore_result": True,
    }


def make_app(settings: Settings, sender_only: bool = False) -> Celery:
    """The Celery app of ``settings``; ``sender_only`` for a process that only sends tasks (the node)."""
    app = Celery("medagent", include=["workers.tasks"])
    app.conf.update(
        **broker_settings(settings, sender_only),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="cpu",
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # a task running while the broker connection drops goes on; its result is kept (idempotent tasks)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )
    app.conf.medagent_settings = settings
    #: the queues whose tools' weights a worker process loads when it starts (set by ``medagent worker``)
    app.conf.medagent_preload_queues = ()
    return app


def settings_from_environment() -> Settings:
    """Settings for a worker process: the file named by ``MEDAGENT_CONFIG``, else built-in defaults."""
    path = os.environ.get("MEDAGENT_CONFIG")
    return load_settings(path) if path else Settings()


app = make_app(settings_from_environment())
