"""Planner evaluation (``medagent planner eval``): tool-selection accuracy, prompt recall, JSON validity.

Requests are read one a line: ``{"id", "instruction", "modality", "body_part", "expected_tools": [...],
"expected_prompts": [...]}`` (modality and body part may be empty). A request is correct when the set of
tools the plan runs equals ``expected_tools``. ``prompt_recall`` is the share of all expected prompts
(structure names, candidate labels; compared after ``tools.prompts.normalise_prompts``) that the plans
name. ``json_valid_rate`` is the share of requests for which the LLM's own text parsed to a plan the
registry accepts (the rules planner writes plans, not text: always 1). A request the LLM planner handed to
the rules planner is scored on the plan it finally returned, and its item says ``"fallback": true``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_core.planner.data import read_jsonl
from agent_core.planner.llm import action_targets
from agent_core.protocol import Plan, PlanError
from agent_core.registry import ToolRegistry
from tools.base import Tool, ToolCard, ToolInput, ToolResult
from tools.prompts import normalise_prompts

REQUIRED_KEYS = ("id", "instruction", "expected_tools")


@dataclass(frozen=True)
class EvalItem:
    """One request to plan, and what a correct plan runs."""

    id: str
    instruction: str
    modality: str
    body_part: str
    expected_tools: tuple[str, ...]
    expected_prompts: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> EvalItem:
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise ValueError(f"{where}: the request lacks {missing}")
        for key in ("expected_tools", "expected_prompts"):
            if not isinstance(data.get(key, []), list):
                raise ValueError(f"{where}: Invalid '{key}' value {data[key]!r} - must be a list")
        return cls(
            id=str(data["id"]),
            instruction=str(data["instruction"]),
            modality=str(data.get("modality") or "").strip().upper(),
            body_part=str(data.get("body_part") or "").strip().upper(),
            expected_tools=tuple(str(t) for t in data["expected_tools"]),
            expected_prompts=tuple(str(p) for p in data.get("expected_prompts") or ()),
        )


def load_items(path: Path, limit: int | None = None) -> list[EvalItem]:
    """The requests of a JSONL file (the first ``limit``)."""
    items = []
    for number, record in enumerate(read_jsonl(path), 1):
        items.append(EvalItem.from_dict(record, f"{path}:{number}"))
        if limit is not None and len(items) >= limit:
            break
    return items


def sample_items(items: Sequence[EvalItem], count: int) -> list[EvalItem]:
    """``count`` requests spread evenly over ``items`` (every k-th): a fixed sample, not a random one."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def plan_prompts(plan: Plan) -> list[str]:
    found: list[str] = []
    for action in plan.actions:
        found.extend(action_targets(action))
    return normalise_prompts(found) if found else []


def _study(item: EvalItem) -> Any:
    from agent_core.planner.rules import StudyContext

    return StudyContext(modality=item.modality, body_part=item.body_part)


def _canonical(registry: ToolRegistry | None, name: str) -> str:
    if registry is None:
        return name
    try:
        return registry.canonical_name(name)
    except PlanError:
        return name


def evaluate(planner: Any, items: Iterable[EvalItem], registry: ToolRegistry | None = None) -> dict[str, Any]:
    """Plan every request with ``planner`` and score it; the report ``medagent planner eval`` prints.

    ``planner`` has ``plan(instruction, study)``; an LLM planner's ``plan_with_source`` is used when it
    has one (for JSON validity and fallbacks).
    """
    rows = []
    expected_total = found_total = valid = 0
    seconds = []
    for item in items:
        started = time.perf_counter()
        source = None
        if hasattr(planner, "plan_with_source"):
            plan, source = planner.plan_with_source(item.instruction, _study(item))
        else:
            plan = planner.plan(item.instruction, _study(item))
        seconds.append(time.perf_counter() - started)
        tools = [_canonical(registry, a.API_name) for a in plan.actions]
        expected = {_canonical(registry, name) for name in item.expected_tools}
        prompts = plan_prompts(plan)
        wanted = normalise_prompts(list(item.expected_prompts)) if item.expected_prompts else []
        expected_total += len(wanted)
        found_total += len(set(wanted) & set(prompts))
        json_valid = source.json_valid if source is not None else True
        valid += json_valid
        row = {
            "id": item.id,
            "predicted_tools": list(dict.fromkeys(tools)),
            "predicted_prompts": prompts,
            "ok": set(tools) == expected,
        }
        if source is not None:
            row["fallback"] = source.planner != "llm"
            row["json_valid"] = json_valid
        rows.append(row)
    n = len(rows)
    report: dict[str, Any] = {
        "n": n,
        "tool_accuracy": round(sum(r["ok"] for r in rows) / n, 4) if n else 0.0,
        "prompt_recall": round(found_total / expected_total, 4) if expected_total else 1.0,
        "json_valid_rate": round(valid / n, 4) if n else 0.0,
        "items": rows,
    }
    if seconds:
        ordered = sorted(seconds)
        report["latency_s"] = {
            "median": round(statistics.median(ordered), 3),
            "p95": round(ordered[min(n - 1, int(round(0.95 * (n - 1))))], 3),
            "mean": round(statistics.fmean(ordered), 3),
        }
    return report


def summary_line(report: dict[str, Any]) -> str:
    line = (
        f"n {report['n']}  tool accuracy {report['tool_accuracy']:.3f}  prompt recall "
        f"{report['prompt_recall']:.3f}  JSON valid {report['json_valid_rate']:.3f}"
    )
    if "latency_s" in report:
        line += (
            f"  latency median {report['latency_s']['median']:.2f} s, p95 {report['latency_s']['p95']:.2f} s"
        )
    return line


class CardTool(Tool):
    """A tool known only by its card (a pseudo tool, or one whose package is not installed here): ready
    for planning, and ``run`` says it cannot run."""

    def __init__(self, card: ToolCard) -> None:
        super().__init__(None)
        self.card = card

    def run(self, tool_input: ToolInput) -> ToolResult:
        return ToolResult.unavailable(
            self.card.name, f"{self.card.name} is known to the planner only by its card"
        )


def registry_with(cards: Sequence[ToolCard], models: Any = None) -> ToolRegistry:
    """The default registry plus tools known only by their cards."""
    registry = ToolRegistry.default(models)
    for card in cards:
        registry.add(CardTool(card))
    return registry
