"""parse_plan reads our JSON and MMedAgent's text, repairs an LLM's small slips, and refuses what a job cannot run."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.protocol import Action, Plan, PlanError, parse_plan

EXPECTED = Plan(
    thoughts="Grounding finds the lungs.",
    actions=(Action("grounding", {"prompts": ["left lung", "right lung"]}),),
    value="Locating both lungs.",
)


def test_mmedagent_instruction_data_reads_as_in_its_repository() -> None:
    # an "assist" field of MMedAgent's eval_data_json/eval_example.jsonl, decoded
    text = (
        '"thoughts🤔"I will apply the ChatCAD-G tool to develop a detailed medical report from the provided '
        'X-ray image.\n"actions🚀"[{"API_name": "ChatCAD-G","API_params": {}}]\n"value👉"Certainly! To '
        "accomplish this task, I will utilize a medical report generation tool to give more details about it."
    )
    plan = parse_plan(text)
    assert plan.actions == (Action("ChatCAD-G", {}),)
    assert plan.thoughts.startswith("I will apply the ChatCAD-G tool") and plan.thoughts.endswith("image.")
    assert plan.value.startswith("Certainly!") and plan.value.endswith("about it.")


@pytest.mark.parametrize(
    "text",
    [
        # our JSON, as written
        '{"thoughts": "Grounding finds the lungs.", "actions": [{"API_name": "grounding", "API_params": '
        '{"prompts": ["left lung", "right lung"]}}], "value": "Locating both lungs."}',
        # in a code fence, with words around it
        'Here is the plan:\n```json\n{"thoughts": "Grounding finds the lungs.", "actions": [{"API_name": '
        '"grounding", "API_params": {"prompts": ["left lung", "right lung"]}}], "value": "Locating both lungs."}'
        "\n```\nLet me know if you need anything else.",
        # Python's quoting, trailing commas, keys in another spelling
        "{'Thoughts': 'Grounding finds the lungs.', 'actions': [{'api_name': 'grounding', 'params': "
        "{'prompts': ['left lung', 'right lung',],},},], 'VALUE': 'Locating both lungs.',}",
        # MMedAgent's sections
        '"thoughts🤔"Grounding finds the lungs.\n"actions🚀"[{"API_name": "grounding", "API_params": '
        '{"prompts": ["left lung", "right lung"]}}]\n"value👉"Locating both lungs.',
        # MMedAgent's sections without the emoji, and with a stop token at the end
        '"thoughts" Grounding finds the lungs. "actions" [{"API_name": "grounding", "API_params": '
        '{"prompts": ["left lung", "right lung"]}}] "value" Locating both lungs.</s>',
        # the sections as labelled lines
        'Thoughts: Grounding finds the lungs.\nActions: [{"API_name": "grounding", "API_params": {"prompts": '
        '["left lung", "right lung"]}}]\nValue: "Locating both lungs."',
        # emoji kept in the keys of a JSON object
        '{"thoughts🤔": "Grounding finds the lungs.", "actions🚀": [{"API_name": "grounding", "API_params": '
        '{"prompts": ["left lung", "right lung"]}}], "value👉": "Locating both lungs."}',
        # unquoted keys and a bare word for the tool
        '{thoughts: "Grounding finds the lungs.", actions: [{API_name: grounding, API_params: {prompts: '
        '["left lung", "right lung"]}}], value: "Locating both lungs."}',
    ],
)
def test_slips_an_llm_makes_are_repaired(text: str) -> None:
    assert parse_plan(text) == EXPECTED


def test_brackets_left_open_at_the_end_are_closed() -> None:
    plan = parse_plan(
        '{"thoughts": "t", "actions": [{"API_name": "grounding", "API_params": {"prompts": ["body"'
    )
    assert plan == Plan("t", (Action("grounding", {"prompts": ["body"]}),), "")
    cut_in_a_string = parse_plan('[{"API_name": "vqa", "API_params": {"question": "is there air')
    assert cut_in_a_string.actions == (Action("vqa", {"question": "is there air"}),)


def test_a_bare_list_or_one_action_is_a_plan_without_thoughts() -> None:
    listed = parse_plan('[{"API_name": "grounding", "API_params": {"prompts": ["bone"]}}, {"API_name": "segmentation", '
                        '"API_params": {"boxes": "$0.boxes"}}]')  # fmt: skip
    assert [a.API_name for a in listed.actions] == ["grounding", "segmentation"]
    assert listed.thoughts == "" and listed.value == ""
    single = parse_plan('{"API_name": "classification"}')
    assert single.actions == (Action("classification", {}),)


def test_apostrophes_escapes_and_literals_survive_repair() -> None:
    plan = parse_plan(
        "{'thoughts': 'the patient's lungs', 'actions': [{'API_name': 'vqa', 'API_params': {'question': "
        "'is it \\u00e9?', 'top_k': 1e1, 'flag': True, 'none': None}}], 'value': 'ok'}"
    )
    assert plan.thoughts == "the patient's lungs"
    assert plan.actions[0].API_params == {"question": "is it é?", "top_k": 10.0, "flag": True, "none": None}


def test_a_word_value_inside_the_actions_is_not_the_value_section() -> None:
    plan = parse_plan(
        '"thoughts🤔"The "actions" are below.\n"actions🚀"[{"API_name": "report_generation", "API_params": '
        '{"style": "value: terse"}}]\n"value👉"Writing the report.'
    )
    assert plan.thoughts == 'The "actions" are below.'
    assert plan.actions[0].API_params == {"style": "value: terse"}
    assert plan.value == "Writing the report."


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the plan is empty"),
        ("I would segment the lungs.", "holds no plan"),
        ('{"thoughts": "t", "value": "v"}', "has no 'actions'"),
        ('"thoughts🤔"t\n"value👉"v', "no 'actions' section"),
        ('{"thoughts": "t", "actions": "grounding", "value": "v"}', "'actions' value 'grounding'"),
        ('[{"API_params": {"prompts": ["body"]}}]', r"actions\[0\].API_name' value None"),
        ('[{"API_name": "  ", "API_params": {}}]', r"actions\[0\].API_name' value '  '"),
        ('[{"API_name": "grounding", "API_params": ["body"]}]', r"actions\[0\].API_params' value \['body'\]"),
        ('[{"API_name": "grounding", "prompts": ["body"]}]', r"actions\[0\]' - unknown key 'prompts'"),
        ('[{"API_name": "grounding", "name": "segmentation"}]', "repeats 'API_name'"),
        ('["grounding"]', r"actions\[0\]' value 'grounding'"),
        ('{"thoughts": 3, "actions": [], "value": "v"}', "'thoughts' value 3"),
        ('{"actions": [}', "closes with '}' where ']' was expected"),
        ('{"actions": [{"API_name": "a" "b"}]}', "not valid JSON even after repair"),
        (
            '[{"API_name": "segmentation", "API_params": {"boxes": "$0.boxes"}}]',
            "must point to an earlier action",
        ),
    ],
)
def test_what_a_job_cannot_run_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_plan(text)


def test_mmedagent_text_round_trips() -> None:
    plan = Plan(
        thoughts="Grounding, then MedSAM inside the boxes; \"quoted\" words and 'value' stay.",
        actions=(
            Action("grounding", {"prompts": ["left lung"]}),
            Action("segmentation", {"boxes": "$0.boxes"}),
        ),
        value="Segmenting the left lung.\nThe SEG follows.",
    )
    text = plan.to_mmedagent_text()
    assert (
        text.splitlines()[0]
        == '"thoughts🤔"Grounding, then MedSAM inside the boxes; "quoted" words and \'value\' stay.'
    )
    assert text.splitlines()[1].startswith('"actions🚀"[{"API_name": "grounding"')
    assert text.splitlines()[2] == '"value👉"Segmenting the left lung.'
    assert parse_plan(text) == plan
    assert parse_plan(Plan("  padded  ", (), " v ").to_mmedagent_text()) == Plan("padded", (), "v")


@pytest.mark.parametrize(
    ("thoughts", "value"), [('t "actions🚀"[] more', "v"), (": t", "v"), ("t", '"quoted whole"')]
)
def test_text_that_would_read_back_differently_is_refused(thoughts: str, value: str) -> None:
    with pytest.raises(PlanError, match="cannot be written in MMedAgent's format"):
        Plan(thoughts, (Action("vqa", {}),), value).to_mmedagent_text()
    assert Plan("ends with a comma,", (), "v").to_mmedagent_text()  # a comma is kept


def _representable(text: str) -> bool:
    """Text MMedAgent's format can hold: no leading ``:`` (read as the marker's) and not wholly quoted."""
    return not text.startswith(":") and not (len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'")


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(str.strip)
_text = _text.filter(_representable)
_params = st.dictionaries(
    st.sampled_from(["prompts", "question", "top_k", "labels"]),
    st.one_of(
        st.text(max_size=12).filter(lambda t: not t.startswith("$")),
        st.integers(-5, 5),
        st.lists(st.text(max_size=8), max_size=3),
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    thoughts=_text.filter(lambda t: "actions" not in t.lower()),
    names=st.lists(st.sampled_from(["grounding", "vqa", "ChatCAD-G", "grounding dino + MedSAM"]), max_size=3),
    params=st.lists(_params, min_size=3, max_size=3),
    value=_text,
)
def test_every_plan_round_trips_through_both_formats(
    thoughts: str, names: list[str], params: list, value: str
) -> None:
    plan = Plan(thoughts, tuple(Action(n, p) for n, p in zip(names, params, strict=False)), value)
    assert parse_plan(plan.to_mmedagent_text()) == plan
    assert parse_plan(json.dumps(plan.to_dict())) == plan


_PIECES = ["{", "}", "[", "]", '"', "'", ",", ":", "thoughts", '"actions🚀"', "value👉", "API_name", "params",
           "True", "1e", "\\", "\\u12", "\\uD800", "À", "x", " ", "\n", "```", "null", "$0.boxes", "-", ".5"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(_PIECES), max_size=25).map("".join)))
def test_any_text_gives_a_plan_or_a_plan_error(text: str) -> None:
    try:
        plan = parse_plan(text)
    except PlanError:
        return
    assert all(action.API_name.strip() and isinstance(action.API_params, dict) for action in plan.actions)
