"""Turn a job's Plan into Celery tasks: chains for actions that need each other, a chord for the rest.

An action needs an earlier one when a parameter names its output (``"boxes": "$0.boxes"``), or when its
tool reads what the earlier actions found (``READS_EARLIER_RESULTS``: a report, an answer). Actions that
need each other, directly or through others, run as one chain in plan order; independent chains run side by
side in a group whose chord ends in ``finalize_job``. Each action's task goes to its tool card's queue
(``cpu`` or ``gpu``) with its time limit (``queue.time_limits``). A task that fails outright (killed at its
hard time limit) would leave the job unfinished: the error path (``link_error``) of the chain, or of the
chord's body, sends ``finalize_after_failure``, which encodes what the job has and records the rest.

Without a result backend (the embedded mode: one worker, one task at a time) a chord cannot join, and
there is nothing to run side by side: every action runs in one chain, in plan order. Both shapes give the
same results: an action always sees the results of the actions it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from agent_core.protocol import REFERENCE, Plan
from agent_core.registry import ToolRegistry
from config import Settings

#: tools that read the results of every earlier action of the plan (``ToolInput.prior_results``)
READS_EARLIER_RESULTS = frozenset({"report_generation", "vqa"})


def action_dependencies(plan: Plan, registry: ToolRegistry) -> list[set[int]]:
    """For each action, the earlier actions it needs (by index): those its parameters name with
    ``"$N.name"``, and all earlier ones for a tool in ``READS_EARLIER_RESULTS``."""
    needs: list[set[int]] = []
    for position, action in enumerate(plan.actions):
        named = set()
        for value in action.API_params.values():
            if isinstance(value, str) and (match := REFERENCE.match(value)):
                named.add(int(match.group(1)))
        if registry.canonical_name(action.API_name) in READS_EARLIER_RESULTS:
            named.update(range(position))
        needs.append({index for index in named if index < position})
    return needs


def action_chains(dependencies: Sequence[set[int]]) -> list[list[int]]:
    """The actions grouped so that each group holds every action linked to another through a dependency
    (the connected components), each in plan order; the groups in the order of their first action."""
    component = list(range(len(dependencies)))

    def root(index: int) -> int:
        while component[index] != index:
            component[index] = component[component[index]]
            index = component[index]
        return index

    for position, needs in enumerate(dependencies):
        for needed in needs:
            component[root(position)] = root(needed)
    chains: dict[int, list[int]] = {}
    for position in range(len(dependencies)):
        chains.setdefault(root(position), []).append(position)
    return sorted(chains.values(), key=lambda members: members[0])


def _options(settings: Settings, tool: str) -> dict[str, Any]:
    limit = settings.queue.time_limit(tool)
    return {"soft_time_limit": limit, "time_limit": limit + settings.queue.time_limit_grace_seconds}


def job_signature(
    app: Celery, job_id: str, plan: Plan, registry: ToolRegistry, settings: Settings
) -> Signature:
    """The canvas of one job: its action tasks (chains, side by side when the app can join them), then
    ``finalize_job`` on ``cpu``. Every signature is immutable: a task takes its ids, never another's result."""
    actions = {}
    for position, action in enumerate(plan.actions):
        tool = registry.get(action.API_name).card
        actions[position] = app.signature(
            "medagent.run_action",
            args=(job_id, position),
            immutable=True,
            queue=tool.queue.value,
            **_options(settings, tool.name),
        )
    finalize = app.signature(
        "medagent.finalize_job",
        args=(job_id,),
        immutable=True,
        queue="cpu",
        **_options(settings, "finalize_job"),
    )
    after_failure = app.signature(
        "medagent.finalize_after_failure",
        args=(job_id,),
        immutable=True,
        queue="cpu",
        **_options(settings, "finalize_job"),
    )
    if not actions:
        return finalize
    if not app.conf.result_backend:
        order = list(actions)
    else:
        chains = action_chains(action_dependencies(plan, registry))
        if len(chains) > 1:
            header = [
                actions[members[0]]
                if len(members) == 1
                else chain(*(actions[position] for position in members))
                for members in chains
            ]
            finalize.link_error(after_failure)  # called once every part has returned, one failed
            return chord(group(header), finalize)
        order = chains[0]
    steps = chain(*(actions[position] for position in order), finalize)
    steps.link_error(after_failure)  # on each step: the steps after a failed one never run
    return steps


def dispatch_job(
    app: Celery,
    job_id: str,
    plan: Plan,
    registry: ToolRegistry,
    settings: Settings | None = None,
    retry_policy: Mapping[str, float] | None = None,
) -> None:
    """Send the job's canvas (``job_signature``) to the broker.

    ``settings``: those of the app when None. ``retry_policy`` (kombu's) bounds how long sending waits
    for an unreachable broker before it raises ``kombu.exceptions.OperationalError``.
    """
    settings = settings if settings is not None else app.conf.medagent_settings
    signature = job_signature(app, job_id, plan, registry, settings)
    options: dict[str, Any] = {}
    if retry_policy is not None:
        options.update(retry=True, retry_policy=dict(retry_policy))
    signature.apply_async(**options)
