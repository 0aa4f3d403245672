"""The rules planner: keyword intents and a structure vocabulary, the default for auto-routed studies.

It reads the instruction for the structures it names, checks that a
ready tool can do it on this modality, and writes a Plan in MMedAgent's format. When no tool can do what
is asked, the plan has no actions and its ``value`` says so plainly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent_core.protocol import Action, Plan, PlanError
from agent_core.registry import ToolRegistry

_SEGMENT_WORDS = re.compile(
    r"\b(segment\w*|outline\w*|contour\w*|delineat\w*|mask\w*|volume\w*|measure\w*)\b"
)
_STRUCTURES = (
    (re.compile(r"\bleft lung\b"), ("left lung",)),
    (re.compile(r"\bright lung\b"), ("right lung",)),
    (re.compile(r"\b(both lungs|lungs|lung fields?|bilateral lungs?)\b"), ("left lung", "right lung")),
    (re.compile(r"\b(body|patient outline|skin)\b"), ("body",)),
)


@dataclass(frozen=True)
class StudyContext:
    """What a planner may know of a study: no patient identifiers."""

    modality: str
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    slices: int = 0


def structures_named(instruction: str) -> list[str]:
    text = instruction.lower()
    found: list[str] = []
    for pattern, names in _STRUCTURES:
        if pattern.search(text):
            found.extend(n for n in names if n not in found)
    return found


class RulesPlanner:
    """Deterministic planning from keywords; never raises on odd instructions.

    With the tools of this release every structure request becomes ``grounded_segmentation``.
    """

    name = "rules"

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry

    def _usable(self, tool_name: str, modality: str) -> tuple[bool, str]:
        tool = self.registry.get(tool_name)
        if modality not in tool.card.modalities:
            return False, f"{tool_name} does not work on {modality or 'unknown'} images here"
        ready, reason = tool.readiness()
        return ready, reason

    def _tools_named(self, text: str) -> list[str]:
        """Tools the instruction names outright ("run intensity_summary"), by name or alias, in order."""
        found: list[tuple[int, str]] = []
        for tool in self.registry.tools():
            for name in (tool.card.name, *tool.card.aliases):
                spoken = name.lower().replace("_", " ")
                for variant in {name.lower(), spoken}:
                    match = re.search(rf"(?<![\w-]){re.escape(variant)}(?![\w-])", text)
                    if match:
                        found.append((match.start(), tool.card.name))
        return list(dict.fromkeys(name for _, name in sorted(found)))

    def _plan_named_tools(self, instruction: str, names: list[str], study: StudyContext) -> Plan:
        where = f"{study.modality} {study.body_part}".strip()
        for name in names:
            usable, reason = self._usable(name, study.modality)
            if not usable:
                return Plan(
                    thoughts=f"The request names {name}, but {reason}.",
                    actions=(),
                    value=f"I cannot do that here: {reason}.",
                )
        return self.registry.validate(
            Plan(
                thoughts=f"The request names {', '.join(names)} for a {where} study; running it as asked.",
                actions=tuple(Action(name, {}) for name in names),
                value=f"Running {', '.join(names)}.",
            )
        )

    def plan(self, instruction: str, study: StudyContext) -> Plan:
        text = instruction.lower()
        structures = structures_named(text)
        where = f"{study.modality} {study.body_part}".strip()
        if not structures and (named := self._tools_named(text)):
            try:
                return self._plan_named_tools(instruction, named, study)
            except PlanError as exc:  # the named tool needs parameters the instruction does not give
                return Plan(
                    thoughts=f"The request names {', '.join(named)}, but {exc}.",
                    actions=(),
                    value="I cannot run that as asked: the tool needs parameters the request does not give.",
                )
        if not structures:
            return Plan(
                thoughts=f"The request '{instruction}' names no structure the tools here know.",
                actions=(),
                value="I cannot do that with the tools available here: no known structure was named.",
            )
        # Locating a structure is answered with its outline too: the SEG, SR and key image show where it is.
        tool_name = "grounded_segmentation"
        verb = "Segmenting" if _SEGMENT_WORDS.search(text) else "Locating and outlining"
        usable, reason = self._usable(tool_name, study.modality)
        if not usable:
            return Plan(
                thoughts=f"The request needs {tool_name} on {where}, but {reason}.",
                actions=(),
                value=f"I cannot do that here: {reason}.",
            )
        names = ", ".join(structures)
        return self.registry.validate(
            Plan(
                thoughts=(
                    f"The request asks for {names} on a {where} study; {tool_name} finds each structure "
                    "and outlines it."
                ),
                actions=(Action(tool_name, {"prompts": structures}),),
                value=f"{verb} {names}. The result will be sent as a DICOM SEG, an SR with the volumes and a key image.",
            )
        )
