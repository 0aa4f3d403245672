"""The Celery app, configured from the node settings.

Embedded mode uses kombu's filesystem transport under ``<storage>/queue``: no external server, and queued
tasks survive a restart. Redis mode uses ``queue.broker_url``. Both run the same tasks. Results are not
kept in a backend: tasks record their outcome in the index.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from kombu import Queue

from config import Settings, load_settings
from config.settings import QueueMode

QUEUES = ("cpu", "gpu")


def broker_settings(settings: Settings) -> dict[str, object]:
    if settings.queue.mode is QueueMode.REDIS:
        return {"broker_url": settings.queue.broker_url}
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
    }


def make_app(settings: Settings) -> Celery:
    app = Celery("medagent", include=["workers.tasks"])
    app.conf.update(
        **broker_settings(settings),
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="cpu",
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    app.conf.medagent_settings = settings
    return app


def settings_from_environment() -> Settings:
    """Settings for a worker process: the file named by ``MEDAGENT_CONFIG``, else built-in defaults."""
    path = os.environ.get("MEDAGENT_CONFIG")
    return load_settings(path) if path else Settings()


app = make_app(settings_from_environment())
