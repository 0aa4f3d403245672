"""Thin Celery tasks: they take a job id and an action index and call ``dicom_node.pipeline``."""

from __future__ import annotations

import functools
import logging

from celery import current_app, shared_task
from celery.signals import worker_process_init

from agent_core.registry import ToolRegistry
from config import Settings
from config.settings import ModelsSection
from dicom_node import pipeline
from dicom_node.index import Index

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _registry(models: ModelsSection) -> ToolRegistry:
    """One registry per process (and models section): its tools keep their loaded engines."""
    return ToolRegistry.default(models)


@functools.lru_cache(maxsize=4)
def _index(path: str) -> Index:
    return Index(path)


def _context(task) -> tuple[Settings, Index]:
    settings: Settings = task.app.conf.medagent_settings
    return settings, _index(str(settings.node.storage / "index.sqlite3"))


@worker_process_init.connect
def _load_registry(**_: object) -> None:
    settings = getattr(current_app.conf, "medagent_settings", None)
    if settings is not None:
        _registry(settings.models)


@shared_task(bind=True, name="medagent.run_action")
def run_action(self, job_id: str, action_index: int) -> str:
    settings, index = _context(self)
    return pipeline.run_action(settings, index, job_id, action_index, _registry(settings.models))


@shared_task(bind=True, name="medagent.finalize_job")
def finalize_job(self, job_id: str) -> list[str]:
    settings, index = _context(self)
    return pipeline.finalize_job(settings, index, job_id)
