"""``medagent planner eval``: tool accuracy, prompt recall and JSON validity over requests in a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_core.planner.evaluate import (
    CardTool,
    EvalItem,
    evaluate,
    load_items,
    registry_with,
    sample_items,
)
from agent_core.planner.llm import PlanSource
from agent_core.planner.rules import RulesPlanner, StudyContext
from agent_core.protocol import Action, Plan
from agent_core.registry import ToolRegistry
from dicom_node.cli import main
from tools.base import ToolCard

REQUESTS = [
    {"id": "a", "instruction": "Segment both lungs", "modality": "CT", "body_part": "CHEST",
     "expected_tools": ["grounded_segmentation"], "expected_prompts": ["left lung", "right lung"]},
    {"id": "b", "instruction": "write a report", "modality": "CR", "body_part": "",
     "expected_tools": ["report_generation"], "expected_prompts": []},
    {"id": "c", "instruction": "hello", "modality": "", "body_part": "", "expected_tools": [],
     "expected_prompts": []},
    {"id": "d", "instruction": "find the liver", "modality": "CT", "body_part": "ABDOMEN",
     "expected_tools": ["grounding"], "expected_prompts": ["liver"]},
]  # fmt: skip


def write_requests(path: Path, requests: list[dict] = REQUESTS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


class ScriptedPlanner:
    """Answers from a table, like an LLM planner: its plans and whether its text was valid."""

    def __init__(self, answers: dict[str, tuple[Plan, bool]]) -> None:
        self.answers = answers

    def plan_with_source(self, instruction: str, study: StudyContext) -> tuple[Plan, PlanSource]:
        plan, valid = self.answers[instruction]
        return plan, PlanSource("llm" if valid else "rules", "text", "" if valid else "bad", 0.01, valid)


def test_scores_are_computed_as_specified(tmp_path: Path) -> None:
    registry = ToolRegistry.default(entry_points=False)
    answers = {
        # right tools, one of two prompts (MedSAM alias: matched through the registry)
        "Segment both lungs": (
            Plan("", (Action("Grounding DINO + MedSAM", {"prompts": ["left lung"]}),), ""),
            True,
        ),
        # right tool
        "write a report": (Plan("", (Action("report_generation", {}),), ""), True),
        # a tool where none was wanted, from the rules fallback
        "hello": (Plan("", (Action("vqa", {}),), ""), False),
        # the wrong tool, but the prompt is there
        "find the liver": (Plan("", (Action("grounded_segmentation", {"prompts": ["Liver"]}),), ""), True),
    }
    report = evaluate(ScriptedPlanner(answers), load_items(write_requests(tmp_path / "r.jsonl")), registry)
    assert report["n"] == 4
    assert report["tool_accuracy"] == 0.5
    assert report["prompt_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["json_valid_rate"] == 0.75
    assert [item["ok"] for item in report["items"]] == [True, True, False, False]
    assert report["items"][0] == {
        "id": "a",
        "predicted_tools": ["grounded_segmentation"],
        "predicted_prompts": ["left lung"],
        "ok": True,
        "fallback": False,
        "json_valid": True,
    }
    assert report["items"][2]["fallback"] is True
    assert set(report["latency_s"]) == {"median", "p95", "mean"}


def test_the_rules_planner_is_scored_on_its_plans(tmp_path: Path) -> None:
    registry = ToolRegistry.default(entry_points=False)
    report = evaluate(RulesPlanner(registry), load_items(write_requests(tmp_path / "r.jsonl")), registry)
    assert report["json_valid_rate"] == 1.0
    assert report["items"][0]["predicted_tools"] == ["grounded_segmentation"]
    assert report["items"][0]["ok"] and report["prompt_recall"] >= 2 / 3


def test_requests_that_lack_fields_are_named_by_file_and_line(tmp_path: Path) -> None:
    path = write_requests(tmp_path / "r.jsonl", [REQUESTS[0], {"id": "x", "instruction": "hi"}])
    with pytest.raises(ValueError, match=r"r.jsonl:2: the request lacks \['expected_tools'\]"):
        load_items(path)
    assert len(load_items(path, limit=1)) == 1
    item = EvalItem.from_dict({"id": 3, "instruction": "x", "modality": " ct ", "expected_tools": []})
    assert (item.id, item.modality, item.body_part, item.expected_prompts) == ("3", "CT", "", ())


def test_a_sample_is_spread_over_the_file_and_fixed() -> None:
    items = [EvalItem(str(i), "x", "", "", (), ()) for i in range(100)]
    sample = sample_items(items, 20)
    assert [i.id for i in sample] == [str(i) for i in range(0, 100, 5)]
    assert sample_items(items[:5], 20) == items[:5]


def test_a_tool_known_by_its_card_is_offered_and_cannot_run() -> None:
    card = ToolCard("bone_age", "Estimate the bone age.", ("bone_age",), ("CR", "DX"), {}, ("text",))
    registry = registry_with([card])
    assert registry.get("bone_age").readiness()[0]
    assert registry.get("bone_age").run(None).status.value == "unavailable"  # type: ignore[arg-type]
    assert isinstance(registry.get("bone_age"), CardTool)


def test_medagent_planner_eval_prints_the_report_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_requests(tmp_path / "requests.jsonl")
    config = tmp_path / "node.yaml"
    config.write_text(f"node: {{storage: {tmp_path / 'var'}}}\n")
    assert main(["planner", "eval", str(path), "--planner", "rules", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"n", "tool_accuracy", "prompt_recall", "json_valid_rate", "items"}
    assert report["n"] == 4 and report["json_valid_rate"] == 1.0
    assert set(report["items"][0]) >= {"id", "predicted_tools", "predicted_prompts", "ok"}
    assert (
        main(
            [
                "planner",
                "eval",
                str(tmp_path / "missing.jsonl"),
                "--planner",
                "rules",
                "--config",
                str(config),
            ]
        )
        == 2
    )
