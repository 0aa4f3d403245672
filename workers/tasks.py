"""Thin Celery tasks: they take a job id (and an action index) and call ``dicom_node.pipeline``.

A transient error (``pipeline.is_transient``: shared storage or the index out of reach, a dropped
connection) is retried with exponential backoff, ``queue.max_retries`` times at most; then the action (or
the job) records the error, so the job still ends and the tasks after it still run. A tool that raises is
never retried: ``pipeline.run_action`` records its error on the action at once. No task waits on another's
result: the canvas (``workers.canvas``) orders them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from typing import TypeVar

from celery import Task, current_app, shared_task
from celery.signals import worker_process_init
from celery.utils.time import get_exponential_backoff_interval

from agent_core.registry import ToolRegistry
from config import Settings
from config.settings import ModelsSection
from dicom_node import pipeline
from dicom_node.index import Index, index_location

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@functools.lru_cache(maxsize=4)
def _registry(models: ModelsSection) -> ToolRegistry:
    """One registry per process (and models section): its tools keep their loaded engines."""
    return ToolRegistry.default(models)


@functools.lru_cache(maxsize=4)
def _index(location: str) -> Index:
    """One index per process and location (a SQLite path or a PostgreSQL URL)."""
    return Index(location)


def _context(task) -> tuple[Settings, Index]:
    settings: Settings = task.app.conf.medagent_settings
    return settings, _index(str(index_location(settings)))


def preload_models(registry: ToolRegistry, queues: Collection[str]) -> list[str]:
    """Load the weights of every tool routed to one of ``queues``; return the names of the tools loaded.

    A tool whose weights do not load is logged and skipped: its first run reports why it cannot run.
    """
    loaded = []
    for tool in registry.tools():
        if tool.card.queue.value not in queues:
            continue
        try:
            tool.load()
        except Exception:
            logger.exception("tool %s: its weights do not load; its runs will say why", tool.card.name)
            continue
        loaded.append(tool.card.name)
    return loaded


@worker_process_init.connect
def _load_registry(**_: object) -> None:
    """Each worker process makes its registry once; ``medagent worker`` also loads its queues' weights."""
    settings = getattr(current_app.conf, "medagent_settings", None)
    if settings is None:
        return
    registry = _registry(settings.models)
    queues = tuple(getattr(current_app.conf, "medagent_preload_queues", ()) or ())
    if queues:
        loaded = preload_models(registry, queues)
        logger.info("worker process ready; weights loaded for %s", ", ".join(loaded) or "no tool")


def _retry_or_give_up(task: Task, settings: Settings, exc: Exception, give_up: Callable[[str], _T]) -> _T:
    """Retry ``task`` later with exponential backoff, or, once its retries are spent, call ``give_up``."""
    queue = settings.queue
    retries = task.request.retries
    if retries >= queue.max_retries:
        return give_up(f"{type(exc).__name__}: {exc} (still failing after {retries} retries)")
    countdown = get_exponential_backoff_interval(
        factor=queue.retry_backoff_seconds, retries=retries, maximum=queue.retry_backoff_max_seconds
    )
    logger.warning(
        "%s%s: transient error %s: %s; retry %d of %d in %.1f s",
        task.name,
        tuple(task.request.args or ()),
        type(exc).__name__,
        exc,
        retries + 1,
        queue.max_retries,
        countdown,
    )
    raise task.retry(exc=exc, countdown=countdown, max_retries=queue.max_retries)


@shared_task(bind=True, name="medagent.run_action")
def run_action(self, job_id: str, action_index: int) -> str:
    settings, index = _context(self)
    try:
        return pipeline.run_action(settings, index, job_id, action_index, _registry(settings.models))
    except Exception as exc:
        if not pipeline.is_transient(exc):
            raise
        return _retry_or_give_up(
            self,
            settings,
            exc,
            lambda error: pipeline.record_action_failure(settings, index, job_id, action_index, error),
        )


def _finalize(task: Task, job_id: str) -> list[str]:
    settings, index = _context(task)
    try:
        return pipeline.finalize_job(settings, index, job_id)
    except Exception as exc:
        if not pipeline.is_transient(exc):
            raise

        def give_up(error: str) -> list[str]:
            pipeline.record_job_failure(index, job_id, f"results could not be encoded and stored: {error}")
            return []

        return _retry_or_give_up(task, settings, exc, give_up)


@shared_task(bind=True, name="medagent.finalize_job")
def finalize_job(self, job_id: str) -> list[str]:
    return _finalize(self, job_id)


@shared_task(bind=True, name="medagent.finalize_after_failure")
def finalize_after_failure(self, job_id: str) -> list[str]:
    """The canvas's error path: a task of the job failed outright (killed at its hard time limit, or an
    error no step records), so the job's chain or chord cannot reach ``finalize_job``. Encode what the
    job has; the actions without a result are recorded as failed."""
    logger.error("job %s: a task failed outright; encoding what the job has", job_id)
    return _finalize(self, job_id)
