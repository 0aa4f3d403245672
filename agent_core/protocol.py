"""MMedAgent's action protocol: a Plan is ``{"thoughts", "actions": [{"API_name", "API_params"}], "value"}``.

Plans and actions are valid by construction: a constructor that returns gave a usable object, and an error
names the field and quotes the value. An action's parameter may name an earlier action's output
(``"$0.boxes"``); the reference must point backwards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

REFERENCE = re.compile(r"^\$(\d+)\.([a-z_]+)$")


class PlanError(ValueError):
    """A plan does not follow the protocol or does not fit the tool registry."""


@dataclass(frozen=True)
class Action:
    """One tool call."""

    API_name: str
    API_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.API_name, str) or not self.API_name.strip():
            raise PlanError(f"Invalid 'API_name' value {self.API_name!r} - must be a non-empty string")
        if not isinstance(self.API_params, dict):
            raise PlanError(f"Invalid 'API_params' value {self.API_params!r} - must be an object")

    def references(self) -> list[tuple[int, str]]:
        """``(action index, output name)`` for every parameter that names an earlier action's output."""
        found = []
        for value in self.API_params.values():
            if isinstance(value, str) and (match := REFERENCE.match(value)):
                found.append((int(match.group(1)), match.group(2)))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"API_name": self.API_name, "API_params": self.API_params}


@dataclass(frozen=True)
class Plan:
    """What the planner decided: its reasoning, the tool calls in order, and the reply to the user."""

    thoughts: str
    actions: tuple[Action, ...]
    value: str

    def __post_init__(self) -> None:
        for name in ("thoughts", "value"):
            if not isinstance(getattr(self, name), str):
                raise PlanError(f"Invalid '{name}' value {getattr(self, name)!r} - must be a string")
        for index, action in enumerate(self.actions):
            if not isinstance(action, Action):
                raise PlanError(f"Invalid 'actions[{index}]' value {action!r} - must be an Action")
            for source, _ in action.references():
                if source >= index:
                    raise PlanError(
                        f"Invalid 'actions[{index}].API_params' - reference to action {source} must point to an "
                        "earlier action"
                    )

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a JSON object, not {type(data).__name__}")
        missing = [key for key in ("thoughts", "actions", "value") if key not in data]
        if missing:
            raise PlanError(f"the plan lacks {missing}")
        if not isinstance(data["actions"], list):
            raise PlanError(f"Invalid 'actions' value {data['actions']!r} - must be a list")
        actions = []
        for index, item in enumerate(data["actions"]):
            if not isinstance(item, dict) or "API_name" not in item:
                raise PlanError(
                    f"Invalid 'actions[{index}]' value {item!r} - must be an object with 'API_name'"
                )
            actions.append(Action(item["API_name"], item.get("API_params") or {}))
        return cls(thoughts=data["thoughts"], actions=tuple(actions), value=data["value"])

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"the plan is not valid JSON: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "thoughts": self.thoughts,
            "actions": [a.to_dict() for a in self.actions],
            "value": self.value,
        }
