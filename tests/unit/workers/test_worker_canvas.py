"""The canvas: which actions need which, and the chains, chord, queues and time limits a job becomes."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.canvas import Signature, _chain, chord

from agent_core.protocol import Action, Plan
from agent_core.registry import ToolRegistry
from config.settings import parse_settings
from workers.app import make_app
from workers.canvas import action_chains, action_dependencies, job_signature


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return ToolRegistry.default(entry_points=False)


def _plan(*actions: tuple[str, dict]) -> Plan:
    return Plan("test", tuple(Action(name, params) for name, params in actions), "test")


LUNGS = {"prompts": ["left lung", "right lung"]}


def _settings(tmp_path: Path, mode: str = "redis", **queue):
    data = {"node": {"storage": str(tmp_path)}, "queue": {"mode": mode, **queue}}
    if mode == "redis":
        data["queue"]["broker_url"] = "redis://127.0.0.1:6379/7"
    return parse_settings(data, environ={})


def _task(signature: Signature) -> tuple[str, tuple, str]:
    return signature.task, tuple(signature.args), signature.options["queue"]


def test_dependencies_come_from_references_and_from_tools_that_read_earlier_results(
    registry: ToolRegistry,
) -> None:
    plan = _plan(
        ("grounding", LUNGS),
        ("segmentation", {"boxes": "$0.boxes"}),
        ("classification", {}),
        ("report_generation", {}),  # reads what every earlier action found
        ("MedSAM", {"boxes": "$0.boxes"}),  # an alias counts as its tool
    )
    assert action_dependencies(plan, registry) == [set(), {0}, set(), {0, 1, 2}, {0}]
    assert action_chains(action_dependencies(plan, registry)) == [[0, 1, 2, 3, 4]]
    independent = _plan(("grounding", LUNGS), ("segmentation", {"boxes": "$0.boxes"}), ("classification", {}))
    assert action_chains(action_dependencies(independent, registry)) == [[0, 1], [2]]
    assert action_chains([set(), set(), {0}, {1}]) == [[0, 2], [1, 3]]


def test_independent_actions_become_a_chord_of_chains_into_finalize(
    registry: ToolRegistry, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, time_limits={"Grounding": 30}, time_limit_grace_seconds=10)
    app = make_app(settings, sender_only=True)
    plan = _plan(("grounding", LUNGS), ("segmentation", {"boxes": "$0.boxes"}), ("classification", {}))
    canvas = job_signature(app, "job-1", plan, registry, settings)
    assert isinstance(canvas, chord)
    first, second = canvas.tasks
    assert isinstance(first, _chain)
    assert [_task(s) for s in first.tasks] == [
        ("medagent.run_action", ("job-1", 0), "cpu"),
        ("medagent.run_action", ("job-1", 1), "gpu"),
    ]
    assert _task(second) == ("medagent.run_action", ("job-1", 2), "gpu")
    assert _task(canvas.body) == ("medagent.finalize_job", ("job-1",), "cpu")
    grounding = first.tasks[0]
    assert (grounding.options["soft_time_limit"], grounding.options["time_limit"]) == (30, 40)
    assert second.options["soft_time_limit"] == settings.queue.default_time_limit_seconds
    assert all(s.immutable for s in (*first.tasks, second, canvas.body))  # a task takes ids, not results
    (errback,) = canvas.body.options["link_error"]  # the error path: once every part has returned
    assert (errback["task"], tuple(errback["args"]), errback["immutable"]) == (
        "medagent.finalize_after_failure",
        ("job-1",),
        True,
    )


def test_dependent_actions_become_one_chain(registry: ToolRegistry, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    app = make_app(settings, sender_only=True)
    plan = _plan(("grounded_segmentation", LUNGS), ("report_generation", {}))
    canvas = job_signature(app, "job-2", plan, registry, settings)
    assert isinstance(canvas, _chain) and not isinstance(canvas, chord)
    assert [_task(s) for s in canvas.tasks] == [
        ("medagent.run_action", ("job-2", 0), "gpu"),
        ("medagent.run_action", ("job-2", 1), "gpu"),
        ("medagent.finalize_job", ("job-2",), "cpu"),
    ]
    (errback,) = canvas.options["link_error"]  # given to each step when the chain is sent
    assert errback["task"] == "medagent.finalize_after_failure" and tuple(errback["args"]) == ("job-2",)


def test_embedded_mode_runs_every_action_in_plan_order(registry: ToolRegistry, tmp_path: Path) -> None:
    settings = _settings(tmp_path, mode="embedded")
    app = make_app(settings)
    assert not app.conf.result_backend  # no backend: a chord could not join
    plan = _plan(("grounding", LUNGS), ("classification", {}))
    canvas = job_signature(app, "job-3", plan, registry, settings)
    assert [_task(s) for s in canvas.tasks] == [
        ("medagent.run_action", ("job-3", 0), "cpu"),
        ("medagent.run_action", ("job-3", 1), "gpu"),
        ("medagent.finalize_job", ("job-3",), "cpu"),
    ]
    empty = job_signature(app, "job-4", _plan(), registry, settings)
    assert _task(empty) == ("medagent.finalize_job", ("job-4",), "cpu")
