"""``medagent plan``: one plan printed as JSON or MMedAgent's text; the LLM planner and training commands attach."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from agent_core.protocol import Action, Plan, parse_plan
from dicom_node.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[3]


def write_config(tmp_path: Path, planner: str = "") -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(f"node: {{storage: {tmp_path / 'var'}}}\n{planner}")
    return path


def test_medagent_plan_prints_one_plan_as_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "plan", "--instruction", "Segment both lungs and write a report",
         "--modality", "ct", "--body-part", "chest", "--config", str(write_config(tmp_path)), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    plan = json.loads(completed.stdout)
    assert plan["actions"] == [
        {"API_name": "grounded_segmentation", "API_params": {"prompts": ["left lung", "right lung"]}},
        {"API_name": "report_generation", "API_params": {}},
    ]
    assert "CT CHEST" in plan["thoughts"]


def test_without_json_the_plan_is_mmedagents_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "plan",
                "--instruction",
                "wat modality is this",
                "--modality",
                "CR",
                "--config",
                str(write_config(tmp_path)),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith('"thoughts🤔"') and '"actions🚀"' in printed and '"value👉"' in printed
    assert parse_plan(printed).actions == (Action("classification", {}),)


def test_configured_rules_are_used_and_bad_ones_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = (
        "planner:\n  rules:\n    - name: ct-report\n      when: {Modality: CT}\n      intent: report\n"
        "      actions: [{API_name: classification}, {API_name: ChatCAD-G}]\n"
    )
    config = write_config(tmp_path, rules)
    assert (
        main(
            ["plan", "--instruction", "write a report", "--modality", "CT", "--config", str(config), "--json"]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert [a["API_name"] for a in plan["actions"]] == ["classification", "report_generation"]
    bad = write_config(tmp_path, rules.replace("Modality: CT", "Modalty: CT"))
    assert main(["plan", "--instruction", "write a report", "--config", str(bad)]) == 2
    assert "planner.rules[0].when.Modalty: 'Modalty' is not a DICOM keyword" in capsys.readouterr().err


def test_llm_planner_is_a_clear_error_when_it_is_not_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "agent_core.planner.llm", None)  # as if the module were absent
    config = str(write_config(tmp_path))
    assert main(["plan", "--instruction", "Segment both lungs", "--planner", "llm", "--config", config]) == 2
    assert "the LLM planner is not installed here" in capsys.readouterr().err


def test_llm_planner_is_built_with_registry_and_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = []

    class LLMPlanner:
        def __init__(self, registry, settings) -> None:
            built.append((registry, settings))

        def plan(self, instruction, study) -> Plan:
            return Plan(
                f"{instruction} on {study.modality}", (Action("vqa", {"question": instruction}),), "v"
            )

    module = types.ModuleType("agent_core.planner.llm")
    module.LLMPlanner = LLMPlanner  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent_core.planner.llm", module)
    config = str(write_config(tmp_path, "planner: {kind: llm}\n"))
    assert (
        main(["plan", "--instruction", "is it normal?", "--modality", "dx", "--config", config, "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["thoughts"] == "is it normal? on DX"
    registry, settings = built[0]
    assert "vqa" in registry.names() and settings.planner.kind.value == "llm"


def test_training_commands_attach_when_their_module_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_training_commands(commands, default_config: Path) -> None:
        planner = commands.add_parser("planner")
        planner.add_argument("action", choices=["train", "eval", "add-tool"])
        planner.set_defaults(handler=lambda arguments: 0, default_config=default_config)

    module = types.ModuleType("agent_core.planner.training_commands")
    module.register_training_commands = register_training_commands  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent_core.planner.training_commands", module)
    arguments = build_parser().parse_args(["planner", "eval"])
    assert arguments.action == "eval" and arguments.default_config == Path("config/node.example.yaml")
    monkeypatch.setitem(sys.modules, "agent_core.planner.training_commands", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["planner", "eval"])
    assert build_parser().parse_args(["plan", "--instruction", "x"]).instruction == "x"
