"""A third-party tool found through the ``medagent.tools`` entry point: listed, planned and run.

``tests/fixtures/third_party`` holds the package as pip installs it: the module and its ``.dist-info``
with ``entry_points.txt`` (what ``[project.entry-points."medagent.tools"]`` in its pyproject writes). Putting
that folder on the path is all an install does for entry-point discovery.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_core.planner import RulesPlanner, StudyContext
from agent_core.registry import ToolRegistry
from dicom_node.pipeline import tool_input_for
from tools.base import ToolStatus

ROOT = Path(__file__).resolve().parents[3]
THIRD_PARTY = ROOT / "tests" / "fixtures" / "third_party"


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(THIRD_PARTY))
    return THIRD_PARTY


def test_third_party_tool_is_listed_by_medagent_models(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"node: {{storage: {tmp_path / 'var'}}}\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(THIRD_PARTY), str(ROOT)])}
    listed = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "models", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["engines"]
    example = [row for row in rows if row["tool"] == "intensity_summary"]
    assert example == [
        {
            "tool": "intensity_summary",
            "queue": "cpu",
            "engine": "intensity_summary",
            "kind": "classical",
            "ready": True,
            "reason": "ready",
        }
    ]
    assert {"grounding", "segmentation", "classification", "retrieval", "vqa"} <= {
        row["tool"] for row in rows
    }


def test_third_party_tool_is_planned_and_runs_on_a_real_ct(installed: Path, chest_ct) -> None:
    registry = ToolRegistry.default()
    assert "intensity_summary" in registry.names() and not registry.broken
    plan = RulesPlanner(registry).plan("Run the intensity summary please", StudyContext(modality="CT"))
    assert [action.API_name for action in plan.actions] == ["intensity_summary"]
    tool = registry.get(plan.actions[0].API_name)
    result = tool.run(tool_input_for(chest_ct, {"percentile": 50}, "", "cpu"))
    assert result.status is ToolStatus.OK
    values = {m.name: m.value for m in result.measurements}
    assert values["Mean intensity"] == pytest.approx(float(chest_ct.array.mean()), rel=1e-6)
    assert values["Percentile 50"] < -300  # a chest CT is mostly air and lung
    # not planned for a modality its card does not list
    refused = RulesPlanner(registry).plan("run intensity_summary", StudyContext(modality="SM"))
    assert refused.actions == () and "does not work on SM" in refused.value


def test_a_broken_third_party_tool_is_reported_not_fatal(tmp_path: Path, monkeypatch) -> None:
    info = tmp_path / "broken_tool-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-tool\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medagent.tools]\nbroken = no_such_module:Tool\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ToolRegistry.default()
    assert "grounding" in registry.names()
    assert list(registry.broken) == ["broken (no_such_module:Tool)"]
    assert "ModuleNotFoundError" in registry.broken["broken (no_such_module:Tool)"]
