"""Planners turn an instruction and a study's metadata into a Plan."""

from agent_core.planner.rules import RulesPlanner, StudyContext

__all__ = ["RulesPlanner", "StudyContext"]
