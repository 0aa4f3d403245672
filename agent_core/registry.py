"""The tool registry: canonical names, MMedAgent's names as aliases, parameter validation of plans.

Besides the seven built-in tools, the registry finds third-party tools through the Python entry-point
group ``medagent.tools``: a package that declares, in its ``pyproject.toml``,

    [project.entry-points."medagent.tools"]
    my_tool = "my_package.module:MyTool"

is found once it is installed in the node's environment, without editing this repository. The entry point
names a ``Tool`` subclass (constructed with the config's ``models`` section when its ``__init__`` takes
it) or a function returning a ``Tool``. A third-party tool that fails to load is reported in
``broken`` (and by ``medagent models``) and left out; it never stops the node.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import jsonschema

from agent_core.protocol import REFERENCE, Action, Plan, PlanError
from tools.base import Tool

if TYPE_CHECKING:
    from config.settings import ModelsSection

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "medagent.tools"


def builtin_tools(models: ModelsSection | None = None) -> list[Tool]:
    from tools.classification import ClassificationTool
    from tools.grounded_segmentation import GroundedSegmentationTool
    from tools.grounding import GroundingTool
    from tools.report_generation import ReportGenerationTool
    from tools.retrieval import RetrievalTool
    from tools.segmentation import SegmentationTool
    from tools.vqa import VQATool

    return [
        GroundingTool(models),
        SegmentationTool(models),
        GroundedSegmentationTool(models),
        ClassificationTool(models),
        ReportGenerationTool(models),
        RetrievalTool(models),
        VQATool(models),
    ]


def _construct(target: Any, models: ModelsSection | None) -> Tool:
    """An entry point's target as a Tool: a class or factory, given ``models`` when it takes an argument."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_models = any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        for p in parameters.values()
    )
    tool = target(models) if takes_models else target()
    if not isinstance(tool, Tool):
        raise TypeError(f"it made a {type(tool).__name__}, not a tools.base.Tool")
    return tool


def entry_point_tools(models: ModelsSection | None = None) -> tuple[list[Tool], dict[str, str]]:
    """The third-party tools of the ``medagent.tools`` entry points, and ``{entry point: why}`` for the broken."""
    tools: list[Tool] = []
    broken: dict[str, str] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"{entry_point.name} ({entry_point.value})"
        try:
            tools.append(_construct(entry_point.load(), models))
        except Exception as exc:
            logger.warning("third-party tool %s does not load: %s: %s", where, type(exc).__name__, exc)
            broken[where] = f"{type(exc).__name__}: {exc}"
    return tools, broken


def _requiring_only_literals(schema: Any, referenced: set[str]) -> Any:
    """``schema`` with the parameters given as references (``"$0.boxes"``) taken off every ``required``.

    A reference is checked when its action runs (``dicom_node.pipeline.resolve_references``); here it
    counts as present, also inside ``anyOf``/``oneOf``/``allOf`` branches ("boxes or points").
    """
    if isinstance(schema, list):
        return [_requiring_only_literals(item, referenced) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if any(key in schema for key in ("anyOf", "oneOf")):
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key, [])
            if any(set(branch.get("required", [])) <= referenced for branch in branches):
                schema = {k: v for k, v in schema.items() if k != key}  # a referenced branch satisfies it
    result = {key: _requiring_only_literals(value, referenced) for key, value in schema.items()}
    if "required" in result:
        result["required"] = [name for name in result["required"] if name not in referenced]
    return result


class ToolRegistry:
    """Tools by canonical name; lookups are case-insensitive and accept aliases."""

    def __init__(self, tools: Iterable[Tool], broken: dict[str, str] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self._names: dict[str, str] = {}
        #: third-party tools that could not be loaded or registered: ``{entry point: why}``
        self.broken: dict[str, str] = dict(broken or {})
        for tool in tools:
            self.add(tool)

    @classmethod
    def default(cls, models: ModelsSection | None = None, *, entry_points: bool = True) -> ToolRegistry:
        """The built-in tools plus, with ``entry_points``, the installed third-party ones.

        A third-party tool whose name or alias clashes with one already registered is left out (in
        ``broken``); the built-in tools always win.
        """
        registry = cls(builtin_tools(models))
        if entry_points:
            extra, broken = entry_point_tools(models)
            registry.broken.update(broken)
            for tool in extra:
                try:
                    registry.add(tool)
                except ValueError as exc:
                    registry.broken[tool.card.name] = str(exc)
        return registry

    def add(self, tool: Tool) -> None:
        """Register one more tool; ``ValueError`` when its name or an alias is taken."""
        name = tool.card.name
        taken = [a for a in (name, *tool.card.aliases) if a.strip().lower() in self._names]
        if name in self._tools or taken:
            raise ValueError(f"Invalid tool '{name}' - the name or alias {(taken or [name])[0]!r} is taken")
        self._tools[name] = tool
        for alias in (name, *tool.card.aliases):
            self._names[alias.strip().lower()] = name

    def tools(self) -> list[Tool]:
        return list(self._tools.values())

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
            referenced = set(action.API_params) - set(literal_params)
            try:
                jsonschema.validate(literal_params, _requiring_only_literals(schema, referenced))
            except jsonschema.ValidationError as exc:
                where = ".".join(str(p) for p in exc.absolute_path)
                raise PlanError(
                    f"Invalid 'actions[{index}].API_params{('.' + where) if where else ''}' for {name}: {exc.message}"
                ) from None
            actions.append(Action(name, action.API_params))
        return Plan(thoughts=plan.thoughts, actions=tuple(actions), value=plan.value)
