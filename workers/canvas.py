"""Turn a job's Plan into Celery tasks: its actions in order, then the encoding step."""

from __future__ import annotations

from celery import Celery, chain

from agent_core.protocol import Plan
from agent_core.registry import ToolRegistry


def dispatch_job(app: Celery, job_id: str, plan: Plan, registry: ToolRegistry) -> None:
    """Send the job: one task per action on its tool's queue, chained, then ``finalize_job`` on ``cpu``.

    Actions run in plan order because a later action may use an earlier one's output (``"$0.boxes"``).
    """
    signatures = [
        app.signature(
            "medagent.run_action",
            args=(job_id, index),
            immutable=True,
            queue=registry.get(action.API_name).card.queue.value,
        )
        for index, action in enumerate(plan.actions)
    ]
    signatures.append(app.signature("medagent.finalize_job", args=(job_id,), immutable=True, queue="cpu"))
    chain(*signatures).apply_async()
