"""The second round: MMedAgent's prompt, a template answer from the results, and a checked model answer."""

from __future__ import annotations

import numpy as np
import pytest

from agent_core.answer import (
    answer,
    compose_answer,
    format_number,
    second_round_prompt,
    template_answer,
    unsupported_numbers,
)
from agent_core.protocol import Action, Plan
from tools.base import Box, Measurement, ToolResult, ToolStatus

QUESTION = "How large are the lungs, and is this a chest CT?"
PLAN = Plan(
    thoughts="t",
    actions=(
        Action("grounded_segmentation", {"prompts": ["left lung", "right lung"]}),
        Action("classification", {}),
    ),
    value="v",
)


def lung_results() -> list[dict]:
    """Real ToolResult summaries: masks counted, boxes counted per label, measurements as dicts."""
    left = np.zeros((3, 8, 8), dtype=bool)
    left[0, :4, :4] = True
    segmented = ToolResult(
        status=ToolStatus.OK,
        engine="CT Hounsfield anatomy + LiteMedSAM",
        masks={"left lung": left, "right lung": np.zeros_like(left)},
        boxes=[Box("left lung", 0, (0, 0, 3, 3), 1.0, 8, 8)],
        measurements=[
            Measurement("left lung", "Volume", 2345.678, "mL"),
            Measurement("left lung", "Mean attenuation", -851.25, "[hnsf'U]"),
        ],
    )
    classified = ToolResult(
        status=ToolStatus.OK,
        engine="DICOM header",
        labels={"chest CT": 0.91, "abdomen CT": 0.06, "brain MRI": 0.03},
    )
    return [segmented.summary("grounded_segmentation"), classified.summary("classification")]


def test_second_round_prompt_is_mmedagents_turn() -> None:
    prompt = second_round_prompt(QUESTION, PLAN, lung_results())
    lines = prompt.splitlines()
    assert lines[0].startswith(
        "grounded_segmentation output: Left lung: volume 2346 mL, mean attenuation -851.2 HU."
    )
    assert "Right lung was not found." in lines[0]
    assert lines[1].startswith("classification output: Most likely: chest CT (probability 0.91)")
    assert lines[2] == ""
    assert lines[3] == f"Answer my first question: {QUESTION}"


def test_template_answer_states_only_what_the_tools_returned() -> None:
    results = lung_results()
    text = template_answer(QUESTION, PLAN, results)
    assert "Left lung: volume 2346 mL, mean attenuation -851.2 HU." in text
    assert "Right lung was not found." in text
    assert "chest CT (probability 0.91); abdomen CT (probability 0.06); brain MRI (probability 0.03)" in text
    assert unsupported_numbers(text, results) == []
    # voxel counts are facts for the report, not numbers for the user
    assert "16" not in text


def test_failures_missing_results_and_text_results_are_told() -> None:
    failed = ToolResult.failed("LiteMedSAM", "the series has no pixel spacing").summary(
        "grounded_segmentation"
    )
    text = template_answer(QUESTION, PLAN, [failed])
    assert "grounded_segmentation could not run (failed): the series has no pixel spacing." in text
    assert "classification returned no result." in text
    report = ToolResult(status=ToolStatus.OK, engine="template", text="FINDINGS: Lungs clear.").summary(
        "report_generation"
    )
    assert (
        template_answer("q", Plan("t", (Action("report_generation", {}),), "v"), [report])
        == "FINDINGS: Lungs clear."
    )
    located = ToolResult(
        status=ToolStatus.OK, boxes=[Box("bone", f, (0, 0, 1, 1), 1.0, 4, 4) for f in range(3)]
    )
    assert "Bone was located on 3 slices." in template_answer(
        "q", Plan("t", (Action("grounding", {}),), "v"), [located.summary("grounding")]
    )


def test_without_actions_the_answer_is_the_plans_reply() -> None:
    refused = Plan("t", (), "I cannot segment that here: no structure the tools here know was named.")
    assert compose_answer("segment the liver", refused, []) == refused.value


@pytest.mark.parametrize(
    ("text", "unsupported"),
    [
        ("The left lung measures 2345.7 mL.", []),
        ("The left lung measures about 2346 mL.", []),
        ("The left lung measures 2345.678 mL.", []),
        ("Its mean attenuation is -851 HU.", []),
        ("Its mean attenuation is 851 HU.", ["851"]),  # the sign is a different claim
        ("Chest CT is 91% likely.", []),
        ("Chest CT is 92% likely.", ["92"]),
        ("The right lung measures 2100 mL.", ["2100"]),
        ("Both lungs together hold 4.7 L.", ["4.7"]),
        ("On T1 images, nothing.", []),  # a number inside a word is a name
        ("The lungs hold 2,345.7 mL.", []),
    ],
)
def test_numbers_are_checked_against_the_results(text: str, unsupported: list[str]) -> None:
    assert unsupported_numbers(text, lung_results()) == unsupported


def test_numbers_of_the_question_and_the_plan_count_as_given() -> None:
    plan = Plan("t", (Action("retrieval", {"question": "q", "top_k": 3}),), "v")
    assert unsupported_numbers("Nodules under 6 mm; 3 passages.", [], "Is a 6 mm nodule a worry?", plan) == []


def test_a_model_answer_is_used_only_when_its_numbers_check() -> None:
    results = lung_results()
    prompts: list[str] = []

    def truthful(prompt: str) -> str:
        prompts.append(prompt)
        return "The left lung holds about 2346 mL; this is most likely a chest CT (0.91)."

    used = answer(QUESTION, PLAN, results, truthful)
    assert used.engine == "llm" and used.note == "" and str(used) == truthful("")
    assert prompts[0] == second_round_prompt(QUESTION, PLAN, results)

    invented = answer(QUESTION, PLAN, results, lambda prompt: "The right lung holds 2210 mL.")
    assert invented.engine == "template" and invented.rejected == ("2210",)
    assert invented.text == template_answer(QUESTION, PLAN, results)
    composed = compose_answer(QUESTION, PLAN, results, lambda prompt: "The right lung holds 2210 mL.")
    assert "stated numbers that no tool returned" in composed
    assert "2210" not in composed and unsupported_numbers(composed, results) == []


def test_a_failing_or_silent_model_falls_back_to_the_template() -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("CUDA out of memory: tried to allocate 20 MiB")

    failed = answer(QUESTION, PLAN, lung_results(), broken)
    assert failed.engine == "template" and "failed (RuntimeError)" in failed.note
    assert "20" not in str(failed)
    silent = answer(QUESTION, PLAN, lung_results(), lambda prompt: "  ")
    assert silent.engine == "template" and "returned nothing" in silent.note


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2345.678, "2346"),
        (123.456, "123.5"),
        (1.5, "1.5"),
        (0.9134, "0.91"),
        (0.01234, "0.0123"),
        (0.0, "0"),
        (-851.25, "-851.2"),
    ],
)
def test_format_number_rounds_the_value_itself(value: float, text: str) -> None:
    assert format_number(value) == text
    assert unsupported_numbers(text, [{"measurements": [{"value": value}]}]) == []
