"""The tool registry: canonical names, MMedAgent's names as aliases, parameter validation of plans."""

from __future__ import annotations

from collections.abc import Iterable

import jsonschema

from agent_core.protocol import REFERENCE, Action, Plan, PlanError
from tools.base import Tool


def builtin_tools() -> list[Tool]:
    from tools.grounded_segmentation import GroundedSegmentationTool
    from tools.grounding import GroundingTool
    from tools.segmentation import SegmentationTool

    return [GroundingTool(), SegmentationTool(), GroundedSegmentationTool()]


class ToolRegistry:
    """Tools by canonical name; lookups are case-insensitive and accept aliases."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        self._names: dict[str, str] = {}
        for tool in tools:
            name = tool.card.name
            if name in self._tools:
                raise ValueError(f"Invalid tool name '{name}' - registered twice")
            self._tools[name] = tool
            for alias in (name, *tool.card.aliases):
                self._names[alias.strip().lower()] = name

    @classmethod
    def default(cls) -> ToolRegistry:
        return cls(builtin_tools())

    def names(self) -> list[str]:
        return list(self._tools)

    def canonical_name(self, name: str) -> str:
        try:
            return self._names[name.strip().lower()]
        except KeyError:
            raise PlanError(f"unknown tool '{name}' (known: {sorted(self._tools)})") from None

    def get(self, name: str) -> Tool:
        return self._tools[self.canonical_name(name)]

    def ready_tools(self) -> list[Tool]:
        return [tool for tool in self._tools.values() if tool.readiness()[0]]

    def validate(self, plan: Plan) -> Plan:
        """Return the plan with canonical tool names; raise ``PlanError`` naming the bad action."""
        actions = []
        for index, action in enumerate(plan.actions):
            name = self.canonical_name(action.API_name)
            schema = self._tools[name].card.parameters
            literal_params = {
                key: value
                for key, value in action.API_params.items()
                if not (isinstance(value, str) and REFERENCE.match(value))
            }
            required = [r for r in schema.get("required", []) if r not in action.API_params]
            try:
                jsonschema.validate(literal_params, {**schema, "required": required})
            except jsonschema.ValidationError as exc:
                where = ".".join(str(p) for p in exc.absolute_path)
                raise PlanError(
                    f"Invalid 'actions[{index}].API_params{('.' + where) if where else ''}' for {name}: {exc.message}"
                ) from None
            actions.append(Action(name, action.API_params))
        return Plan(thoughts=plan.thoughts, actions=tuple(actions), value=plan.value)
