"""Planners turn an instruction and a study's metadata into a Plan."""

from agent_core.planner.rules import (
    DEFAULT_RULES,
    Intent,
    RulesPlanner,
    StudyContext,
    check_rules,
    detect_intents,
    planner_metadata,
    structures_named,
)

__all__ = [
    "DEFAULT_RULES",
    "Intent",
    "RulesPlanner",
    "StudyContext",
    "check_rules",
    "detect_intents",
    "planner_metadata",
    "structures_named",
]
