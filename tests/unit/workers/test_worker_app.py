"""The Celery app made from the node settings, and the queue section that configures it."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError
from config.settings import parse_settings
from workers.app import DispatchOnlyRedisBackend, make_app


def _settings(tmp_path: Path, **queue):
    return parse_settings({"node": {"storage": str(tmp_path)}, "queue": queue}, environ={})


def test_redis_mode_acks_late_prefetches_one_and_hands_a_dead_worker_task_on(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        mode="redis",
        broker_url="redis://127.0.0.1:6379/7",
        visibility_timeout_seconds=20,
        retry_backoff_max_seconds=5,
    )
    app = make_app(settings)
    conf = app.conf
    assert conf.broker_url == "redis://127.0.0.1:6379/7"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert {queue.name for queue in conf.task_queues} == {"cpu", "gpu"}
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == 20
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 5
    assert isinstance(app.backend, DispatchOnlyRedisBackend) and conf.task_ignore_result is False
    assert conf.result_backend_always_retry  # a worker waits for Redis to keep a chord's result
    assert not make_app(settings, sender_only=True).conf.result_backend_always_retry  # the node does not
    assert not (tmp_path / "queue").exists()


def test_embedded_mode_queues_in_a_folder_of_the_storage(tmp_path: Path) -> None:
    app = make_app(_settings(tmp_path))
    assert app.conf.broker_url == "filesystem://"
    assert app.conf.broker_transport_options["data_folder_in"] == str(tmp_path / "queue" / "messages")
    assert not app.conf.result_backend and app.conf.task_acks_late


def test_time_limits_are_per_tool_with_a_default(tmp_path: Path) -> None:
    queue = _settings(tmp_path, time_limits={"Segmentation": 120}, default_time_limit_seconds=600).queue
    assert (queue.time_limit("segmentation"), queue.time_limit("grounding")) == (120, 600)


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        ({"time_limits": {"vqa": 0}}, "queue.time_limits: 'vqa': 0.0 must be a number of seconds above 0"),
        (
            {"visibility_timeout_seconds": 30, "retry_backoff_max_seconds": 60},
            "queue: retry_backoff_max_seconds 60 must be below visibility_timeout_seconds 30",
        ),
        (
            {"mode": "redis", "broker_url": "redis://h/0", "result_backend_url": "mysql://h/db"},
            "queue: result_backend_url 'mysql://h/db' must be a redis:// URL",
        ),
    ],
)
def test_a_bad_queue_section_names_the_key(tmp_path: Path, queue: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, **queue)
    assert expected in str(error.value)
