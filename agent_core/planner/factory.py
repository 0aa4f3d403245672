"""The planner a node uses, from its settings: the rules planner, or the LLM planner (issue 6)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_core.planner.rules import RulesPlanner
from agent_core.registry import ToolRegistry

if TYPE_CHECKING:
    from config import Settings


def make_planner(settings: Settings, registry: ToolRegistry) -> Any:
    """``planner.kind``'s planner; both have ``plan(instruction, StudyContext) -> Plan``.

    The LLM planner falls back to the rules planner (with ``planner.rules``) on a plan it cannot use;
    its weights are loaded once per process.
    """
    if settings.planner.kind.value == "llm":
        from agent_core.planner.llm import LLMPlanner

        return LLMPlanner(registry, settings)
    return RulesPlanner(registry, rules=settings.planner.rules)
