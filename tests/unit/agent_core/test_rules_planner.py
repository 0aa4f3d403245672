"""The declarative rules planner: intents, structures, DICOM conditions, config rules, honest refusals."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.planner import (
    DEFAULT_RULES,
    Intent,
    RulesPlanner,
    StudyContext,
    check_rules,
    detect_intents,
    planner_metadata,
    structures_named,
)
from agent_core.planner.rules import Condition, labels_named
from agent_core.registry import ToolRegistry
from config.settings import ConfigError
from tools.grounding import hounsfield, radiograph

CHEST_CT = StudyContext(modality="CT", body_part="CHEST")
S, L, C, R, K, V = Intent.SEGMENT, Intent.LOCATE, Intent.CLASSIFY, Intent.REPORT, Intent.KNOWLEDGE, Intent.VQA


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return ToolRegistry.default(entry_points=False)


@pytest.fixture(scope="module")
def planner(registry: ToolRegistry) -> RulesPlanner:
    return RulesPlanner(registry)


def planned(plan: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(action.API_name, action.API_params) for action in plan.actions]


@pytest.mark.parametrize(
    ("instruction", "intents"),
    [
        ("Segment both lungs", [S]),
        ("segmnt the lungs pls", [S]),
        ("seg lungs", [S]),
        ("How large is the left lung?", [S]),
        ("where is the left lung?", [L]),
        ("detect the bones", [L]),
        ("find and segment the bones", [S]),  # segmenting brings the boxes too
        ("wat modality is this?", [C]),
        ("What kind of image is this", [C]),
        ("clasify this image", [C]),
        ("write a report", [R]),
        ("Generate a radiology reprot", [R]),
        ("describe this image", [R]),
        ("report the volume of the lungs", [S]),  # "report" as a verb asks for the number, not a report
        ("What is pneumonia?", [K]),
        ("Explain emphysema", [K]),
        ("Is there a pneumothorax in this image?", [V]),
        ("does the patient have an effusion?", [V]),
        ("write a report and segment the lungs", [S, R]),  # the report reads what the others found
        ("Segment the lungs and tell me: is there an effusion?", [S, V]),
        ("What causes pneumothorax? Also classify the image.", [C, K]),
        ("hello there", []),
    ],
)
def test_intents_are_read_from_the_instruction(instruction: str, intents: list[Intent]) -> None:
    assert detect_intents(instruction) == intents


@pytest.mark.parametrize(
    ("instruction", "structures"),
    [
        ("Segment both lungs", ["left lung", "right lung"]),
        ("outline the left lung", ["left lung"]),
        ("outline the lt lung and the R. lung", ["left lung", "right lung"]),
        ("the lung fields", ["left lung", "right lung"]),
        ("the lung", ["left lung", "right lung"]),
        ("bones and the body outline", ["body", "bone"]),
        ("free air", ["air"]),
        ("the liver", []),
    ],
)
def test_structures_are_named_in_the_grounding_tools_words(instruction: str, structures: list[str]) -> None:
    assert structures_named(instruction) == structures


def test_every_structure_the_grounding_engines_know_can_be_asked_for() -> None:
    for structure in (*hounsfield.KNOWN_STRUCTURES, *radiograph.KNOWN_STRUCTURES):
        assert structure in structures_named(f"segment the {structure}"), structure


def test_labels_are_read_after_as_or_between() -> None:
    assert labels_named("classify this image as normal or pneumonia") == ["normal", "pneumonia"]
    assert labels_named("classify it into a chest x-ray, a brain MRI or an abdominal CT") == [
        "chest x-ray",
        "brain mri",
        "abdominal ct",
    ]
    assert labels_named("classify as pneumonia") == []  # one candidate is no choice


def test_default_rules_are_valid_and_plan_every_built_in_tool(
    planner: RulesPlanner, registry: ToolRegistry
) -> None:
    assert check_rules(DEFAULT_RULES) == []
    assert planner._tool_errors(DEFAULT_RULES) == []
    planned_tools = {action["API_name"] for rule in DEFAULT_RULES for action in rule["actions"]}
    assert planned_tools == set(registry.names())


@pytest.mark.parametrize(
    ("instruction", "study", "expected"),
    [
        (
            "Segment both lungs",
            CHEST_CT,
            [("grounded_segmentation", {"prompts": ["left lung", "right lung"]})],
        ),
        ("left lung", CHEST_CT, [("grounded_segmentation", {"prompts": ["left lung"]})]),
        ("where is the left lung?", CHEST_CT, [("grounding", {"prompts": ["left lung"]})]),
        (
            "segment the lungs with medsam",
            CHEST_CT,
            [
                ("grounding", {"prompts": ["left lung", "right lung"]}),
                ("segmentation", {"boxes": "$0.boxes"}),
            ],
        ),
        ("wat modality is this?", StudyContext("CR"), [("classification", {})]),
        (
            "classify this image as normal or pneumonia",
            StudyContext("CR"),
            [("classification", {"labels": ["normal", "pneumonia"]})],
        ),
        ("What is pneumonia?", CHEST_CT, [("retrieval", {"question": "What is pneumonia?"})]),
        (
            "Is there a pneumothorax in this image?",
            StudyContext("DX"),
            [("vqa", {"question": "Is there a pneumothorax in this image?"})],
        ),
        ("write a report", StudyContext("MR", "HEAD"), [("report_generation", {})]),
        # on a chest study the report rule measures the lungs first
        (
            "write a report",
            StudyContext("CR", "CHEST"),
            [("grounded_segmentation", {"prompts": ["left lung", "right lung"]}), ("report_generation", {})],
        ),
    ],
)
def test_each_intent_is_planned_with_its_tool(
    planner: RulesPlanner, instruction: str, study: StudyContext, expected: list
) -> None:
    plan = planner.plan(instruction, study)
    assert planned(plan) == expected
    assert plan.value and "cannot" not in plan.value


def test_several_tools_run_in_order_with_the_report_last(planner: RulesPlanner) -> None:
    abdomen = StudyContext("CT", "ABDOMEN")
    plan = planner.plan("Write a report and segmnt the bones", abdomen)
    assert planned(plan) == [("grounded_segmentation", {"prompts": ["bone"]}), ("report_generation", {})]
    # the chest report measures the lungs too; asked twice, the lungs are segmented once
    chest = planner.plan("Segment both lungs and write a report", CHEST_CT)
    assert planned(chest) == [
        ("grounded_segmentation", {"prompts": ["left lung", "right lung"]}),
        ("report_generation", {}),
    ]
    assert "segment-structures" in chest.thoughts and "chest-report" in chest.thoughts


def test_references_are_renumbered_when_rules_are_joined(planner: RulesPlanner) -> None:
    plan = planner.plan("Classify the image, then segment the lungs with MedSAM", CHEST_CT)
    assert planned(plan) == [
        ("classification", {}),
        ("grounding", {"prompts": ["left lung", "right lung"]}),
        ("segmentation", {"boxes": "$1.boxes"}),
    ]


def test_a_question_beside_a_task_is_answered_after_it(planner: RulesPlanner) -> None:
    plan = planner.plan("Segment the lungs and tell me: is there an effusion?", CHEST_CT)
    assert planned(plan) == [
        ("grounded_segmentation", {"prompts": ["left lung", "right lung"]}),
        ("vqa", {"question": "is there an effusion?"}),
    ]


@pytest.mark.parametrize(
    ("instruction", "study", "said"),
    [
        (
            "Segment both lungs",
            StudyContext("MR", "HEAD"),
            "grounded_segmentation does not work on MR images here",
        ),
        ("write a report", StudyContext("ES"), "report_generation does not work on ES images here"),
        ("segment the liver", CHEST_CT, "no structure the tools here know was named (known: body, left lung"),
        ("where is the nodule?", CHEST_CT, "I cannot locate that here"),
        ("What is the weather?", CHEST_CT, "it does not read as a medical question"),
        ("run grounded_segmentation", CHEST_CT, "the tool needs parameters the request does not give"),
    ],
)
def test_what_cannot_be_done_gets_no_actions_and_a_plain_reason(
    planner: RulesPlanner, instruction: str, study: StudyContext, said: str
) -> None:
    plan = planner.plan(instruction, study)
    assert plan.actions == ()
    assert "cannot" in plan.value and said in plan.value


def test_what_can_be_done_runs_and_the_rest_is_refused_by_name(planner: RulesPlanner) -> None:
    plan = planner.plan("Segment the liver and write a report", StudyContext("CT", "ABDOMEN"))
    assert planned(plan) == [("report_generation", {})]
    assert "I cannot segment that here" in plan.value and "Writing a report" in plan.value


@pytest.mark.parametrize("instruction", ["hello", "", "   ", "thanks!"])
def test_an_unclear_request_asks_what_is_wanted(planner: RulesPlanner, instruction: str) -> None:
    plan = planner.plan(instruction, CHEST_CT)
    assert plan.actions == ()
    assert "Please say which" in plan.value and "Segment both lungs" in plan.value


def test_a_tool_that_is_not_ready_is_not_planned(
    registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry.get("vqa"), "readiness", lambda: (False, "LLaVA-Med: no weights configured"))
    plan = RulesPlanner(registry).plan("Is there an effusion in this image?", CHEST_CT)
    assert plan.actions == () and "LLaVA-Med: no weights configured" in plan.value


THIN_CHEST_RULE = {
    "name": "thin-axial-chest-ct",
    "when": {
        "Modality": "CT",
        "BodyPartExamined": {"regex": "CHEST|THORAX|LUNG"},
        "SliceThickness": {"range": [0, 2.5]},
        "ImageType": {"any_of": ["AXIAL"]},
    },
    "intent": "segment",
    "keywords": ["lung*"],
    "actions": [
        {"API_name": "grounding", "API_params": {"prompts": "$structures"}},
        {"API_name": "MedSAM", "API_params": {"boxes": "$0.boxes"}},
    ],
    "value": "Thin chest CT: $structures from boxes.",
}


@pytest.mark.parametrize(
    ("metadata", "configured"),
    [
        ({"SliceThickness": "1.25", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, True),
        ({"SliceThickness": "5", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, False),  # too thick
        ({"SliceThickness": "1.25", "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}, False),
        ({"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, False),  # a keyword the study lacks fails its condition
    ],
)
def test_configured_rules_match_on_dicom_keywords_before_the_defaults(
    registry: ToolRegistry, metadata: dict[str, str], configured: bool
) -> None:
    planner = RulesPlanner(registry, rules=[THIN_CHEST_RULE])
    study = StudyContext("CT", "CHEST", metadata=metadata)
    plan = planner.plan("Segment both lungs", study)
    if configured:
        assert planned(plan) == [
            ("grounding", {"prompts": ["left lung", "right lung"]}),
            ("segmentation", {"boxes": "$0.boxes"}),
        ]
        assert plan.value == "Thin chest CT: left lung, right lung from boxes."
        assert "thin-axial-chest-ct" in plan.thoughts
    else:
        assert planned(plan) == [("grounded_segmentation", {"prompts": ["left lung", "right lung"]})]
    # the keywords must be in the instruction too
    assert planned(planner.plan("segment the bones", study))[0][0] == "grounded_segmentation"


def test_a_configured_rule_may_say_why_nothing_runs(registry: ToolRegistry) -> None:
    rules = [
        {
            "name": "no-slide-reports",
            "when": {"Modality": "SM"},
            "intent": "report",
            "actions": [],
            "value": "Reports on whole-slide images are not offered here.",
        }
    ]
    plan = RulesPlanner(registry, rules=rules).plan("write a report", StudyContext("SM"))
    assert plan.actions == () and plan.value == "Reports on whole-slide images are not offered here."


def test_a_keyword_rule_plans_an_instruction_without_an_intent_word(registry: ToolRegistry) -> None:
    rules = [
        {
            "name": "nodules",
            "intent": "locate",
            "keywords": ["nodule*"],
            "actions": [{"API_name": "grounding", "API_params": {"prompts": ["nodule"]}}],
        }
    ]
    plan = RulesPlanner(registry, rules=rules).plan("nodules please", CHEST_CT)
    assert planned(plan) == [("grounding", {"prompts": ["nodule"]})]
    assert plan.value == "Running grounding."


@pytest.mark.parametrize(
    ("condition", "value", "holds"),
    [
        (Condition("Modality", "equals", "ct"), "CT", True),
        (Condition("SliceThickness", "equals", 1), "1.0", True),
        (Condition("Modality", "equals", "CT"), "MR", False),
        (Condition("BodyPartExamined", "regex", "chest|thorax"), "CHEST_ABDOMEN", True),
        (Condition("Modality", "in", ["CR", "DX"]), "DX", True),
        (Condition("Modality", "in", ["CR", "DX"]), "CT", False),
        (Condition("SliceThickness", "range", [0, 2.5]), "2.5", True),
        (Condition("SliceThickness", "range", [None, 2.5]), "3", False),
        (Condition("PixelSpacing", "range", [0.5, 1]), "0.7\\0.7", True),
        (Condition("PixelSpacing", "range", [0.5, 1]), "0.7\\1.2", False),
        (Condition("SliceThickness", "range", [0, 10]), "thin", False),
        (Condition("ImageType", "any_of", ["axial", "LOCALIZER"]), "ORIGINAL\\PRIMARY\\AXIAL", True),
        (Condition("ImageType", "all_of", ["ORIGINAL", "AXIAL"]), "ORIGINAL\\PRIMARY\\AXIAL", True),
        (Condition("ImageType", "all_of", ["DERIVED", "AXIAL"]), "ORIGINAL\\PRIMARY\\AXIAL", False),
    ],
)
def test_conditions(condition: Condition, value: str, holds: bool) -> None:
    assert condition.holds({condition.keyword: value}) is holds
    assert condition.holds({}) is False


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        ({"name": "x"}, "planner.rules: {'name': 'x'} must be a list of rules"),
        ([{"intent": "segment", "actions": [{"API_name": "grounding"}]}], "planner.rules[0].name: None"),
        ([{"name": "x", "intent": "segment", "actions": [], "value": "v", "whenn": {}}], "planner.rules[0].whenn: unknown key"),
        ([{"name": "x", "actions": [], "value": "v"}], "planner.rules[0].intent: required"),
        ([{"name": "x", "intent": "dance", "actions": [], "value": "v"}], "planner.rules[0].intent: Invalid intent 'dance'"),
        ([{"name": "x", "intent": "segment", "value": "v"}], "planner.rules[0].actions: required"),
        ([{"name": "x", "intent": "segment", "actions": []}], "planner.rules[0].actions: an empty list needs a 'value'"),
        (
            [{"name": "x", "intent": "segment", "when": {"Modalty": "CT"}, "actions": [], "value": "v"}],
            "planner.rules[0].when.Modalty: 'Modalty' is not a DICOM keyword",
        ),
        (
            [{"name": "x", "intent": "segment", "when": {"PatientName": "X"}, "actions": [], "value": "v"}],
            "planner.rules[0].when.PatientName: 'PatientName' may identify a patient",
        ),
        (
            [{"name": "x", "intent": "segment", "when": {"BodyPartExamined": {"regex": "("}}, "actions": [], "value": "v"}],
            "planner.rules[0].when.BodyPartExamined.regex: '(' is not a valid regex",
        ),
        (
            [{"name": "x", "intent": "segment", "when": {"SliceThickness": {"range": [10, 0]}}, "actions": [], "value": "v"}],
            "planner.rules[0].when.SliceThickness.range: [10, 0] - the low end must not exceed the high end",
        ),
        (
            [{"name": "x", "intent": "segment", "when": {"SliceThickness": {"range": ["0", 1]}}, "actions": [], "value": "v"}],
            "planner.rules[0].when.SliceThickness.range: ['0', 1] must be [low, high]",
        ),
        (
            [{"name": "x", "intent": "segment", "when": {"Modality": {"regex": "CT", "in": ["MR"]}}, "actions": [], "value": "v"}],
            "planner.rules[0].when.Modality: {'regex': 'CT', 'in': ['MR']} must be a value or one of",
        ),
        (
            [{"name": "x", "intent": "segment", "when": {"ImageType": {"any_of": []}}, "actions": [], "value": "v"}],
            "planner.rules[0].when.ImageType.any_of: [] must be a non-empty list",
        ),
        (
            [{"name": "x", "intent": "segment", "keywords": "lung", "actions": [], "value": "v"}],
            "planner.rules[0].keywords: 'lung' must be a list of words",
        ),
        (
            [{"name": "x", "intent": "segment", "actions": [{"API_name": ""}]}],
            "planner.rules[0].actions[0].API_name: '' must be a non-empty tool name",
        ),
        (
            [{"name": "x", "intent": "segment", "actions": [{"API_name": "grounding", "API_params": {"prompts": "$organs"}}]}],
            "planner.rules[0].actions[0].API_params.prompts: unknown placeholder '$organs'",
        ),
        (
            [{"name": "x", "intent": "segment", "actions": [{"API_name": "segmentation", "API_params": {"boxes": "$0.boxes"}}]}],
            "planner.rules[0].actions[0].API_params.boxes: '$0.boxes' must name an earlier action of this rule",
        ),
        (
            [{"name": "x", "intent": "segment", "actions": [{"API_name": "grounding", "params": {}}]}],
            "planner.rules[0].actions[0].params: unknown key",
        ),
        (
            [{"name": "x", "intent": "report", "actions": [], "value": "v"}] * 2,
            "planner.rules[1].name: 'x' is used by planner.rules[0] too",
        ),
    ],
)  # fmt: skip
def test_invalid_rules_are_named_by_field(rules: Any, error: str) -> None:
    assert any(message.startswith(error) for message in check_rules(rules)), check_rules(rules)


def test_a_planner_with_invalid_rules_raises_a_config_error_naming_each_field(registry: ToolRegistry) -> None:
    rules = [
        {"name": "a", "intent": "segment", "actions": [{"API_name": "ChatCAD-X"}]},
        {
            "name": "b",
            "intent": "locate",
            "actions": [{"API_name": "grounding", "API_params": {"prompts": "body"}}],
        },
    ]
    with pytest.raises(ConfigError) as raised:
        RulesPlanner(registry, rules=rules)
    message = str(raised.value)
    assert "planner.rules[0].actions[0].API_name: unknown tool 'ChatCAD-X'" in message
    assert "planner.rules[1]: Invalid 'actions[0].API_params.prompts' for grounding" in message
    with pytest.raises(ConfigError, match=r"planner.rules\[0\].when.Modalty"):
        RulesPlanner(
            registry,
            rules=[{"name": "a", "intent": "report", "when": {"Modalty": "CT"}, "actions": [], "value": "v"}],
        )


def test_study_context_holds_no_patient_identifiers() -> None:
    attributes = {
        "Modality": "CT",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SliceThickness": 1.25,
        "PatientName": "Doe^Jane",
        "PatientID": "123",
        "StudyInstanceUID": "1.2.3",
        "StudyDate": "20240101",
        "AccessionNumber": "A1",
        "NotAKeyword": "x",
        "BodyPartExamined": "",
    }
    assert planner_metadata(attributes) == {
        "Modality": "CT",
        "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
        "SliceThickness": "1.25",
    }
    with pytest.raises(ValueError, match="Invalid 'metadata' key 'PatientID' - a planner must not see"):
        StudyContext("CT", metadata={"PatientID": "123"})
    with pytest.raises(ValueError, match="'Colour' - not a DICOM keyword"):
        StudyContext("CT", metadata={"Colour": "red"})
    context = StudyContext("CT", body_part="CHEST", metadata={"Modality": "MR", "SliceThickness": "1"})
    assert context.keywords() == {"Modality": "CT", "BodyPartExamined": "CHEST", "SliceThickness": "1"}


@settings(max_examples=200, deadline=None)
@given(
    instruction=st.one_of(
        st.text(max_size=80),
        st.lists(
            st.sampled_from(
                ["segment", "the", "lungs", "report", "what", "is", "pneumonia", "?", "this image", "modality",
                 "as", "or", "medsam", "where", "bone", "and", ".", "explain", "find", "classify", "seg"]
            ),
            max_size=12,
        ).map(" ".join),
    ),
    modality=st.sampled_from(["CT", "MR", "CR", "DX", "SM", "US", "", "XX"]),
)  # fmt: skip
def test_any_instruction_gets_a_valid_plan_or_an_honest_empty_one(
    planner: RulesPlanner, registry: ToolRegistry, instruction: str, modality: str
) -> None:
    plan = planner.plan(instruction, StudyContext(modality))
    assert registry.validate(plan) == plan
    assert plan.value.strip()
    for action in plan.actions:
        assert modality in registry.get(action.API_name).card.modalities
