import pytest

from agent_core.planner import RulesPlanner, StudyContext
from agent_core.protocol import Action, Plan, PlanError
from agent_core.registry import ToolRegistry


def test_plan_round_trips_through_json() -> None:
    text = (
        '{"thoughts": "t", "actions": [{"API_name": "grounded_segmentation", "API_params": {"prompts": ["liver"]}}],'
        ' "value": "v"}'
    )
    plan = Plan.from_json(text)
    assert plan.actions == (Action("grounded_segmentation", {"prompts": ["liver"]}),)
    assert Plan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"thoughts": "t", "value": "v"}', "lacks ['actions']"),
        ('{"thoughts": "t", "actions": {}, "value": "v"}', "'actions' value"),
        ('{"thoughts": "t", "actions": [{"API_params": {}}], "value": "v"}', "actions[0]"),
        ('{"thoughts": "t", "actions": [{"API_name": "", "API_params": {}}], "value": "v"}', "'API_name'"),
        ('{"thoughts": 3, "actions": [], "value": "v"}', "'thoughts'"),
        (
            '{"thoughts": "t", "actions": [{"API_name": "segmentation", "API_params": {"boxes": "$0.boxes"}}],'
            ' "value": "v"}',
            "must point to an earlier action",
        ),
    ],
)
def test_malformed_plans_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Plan.from_json(text)


def test_registry_resolves_mmedagent_aliases_and_validates_parameters() -> None:
    registry = ToolRegistry.default()
    assert registry.canonical_name("Grounding DINO + MedSAM") == "grounded_segmentation"
    assert registry.canonical_name("MedSAM") == "segmentation"
    assert registry.canonical_name("GROUNDING") == "grounding"
    with pytest.raises(PlanError, match="unknown tool 'ChatCAD-X'"):
        registry.canonical_name("ChatCAD-X")
    chained = Plan(
        "t",
        (Action("grounding dino", {"prompts": ["left lung"]}), Action("MedSAM", {"boxes": "$0.boxes"})),
        "v",
    )
    validated = registry.validate(chained)
    assert [a.API_name for a in validated.actions] == ["grounding", "segmentation"]
    with pytest.raises(PlanError, match=r"actions\[0\].API_params.prompts"):
        registry.validate(Plan("t", (Action("grounding", {"prompts": "left lung"}),), "v"))
    with pytest.raises(PlanError, match=r"actions\[0\].API_params.*'prompts' is a required property"):
        registry.validate(Plan("t", (Action("grounded_segmentation", {}),), "v"))


def test_rules_planner_plans_lung_segmentation_for_chest_ct() -> None:
    planner = RulesPlanner(ToolRegistry.default())
    plan = planner.plan("Segment both lungs", StudyContext(modality="CT", body_part="CHEST"))
    assert plan.to_dict()["actions"] == [
        {"API_name": "grounded_segmentation", "API_params": {"prompts": ["left lung", "right lung"]}}
    ]
    assert "left lung" in plan.thoughts and plan.value
    assert planner.plan("outline the left lung", StudyContext("CT")).actions[0].API_params == {
        "prompts": ["left lung"]
    }


def test_rules_planner_says_plainly_when_it_cannot_help() -> None:
    planner = RulesPlanner(ToolRegistry.default())
    mr = planner.plan("Segment both lungs", StudyContext(modality="MR", body_part="HEAD"))
    assert mr.actions == () and "does not work on MR" in mr.value
    unknown = planner.plan("What is the weather?", StudyContext(modality="CT"))
    assert unknown.actions == () and "cannot" in unknown.value
