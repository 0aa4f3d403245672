from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from config.settings import ModelsSection
from dicom_node.encode.codes import FINDING, IMPRESSION
from dicom_node.encode.sr import report_sections
from tests.helpers.tiny_models import save_tiny_llama
from tools.base import Box, Measurement, ToolInput, ToolResult, ToolStatus
from tools.llm import SMOLLM2_ENGINE, load_causal_lm
from tools.report_generation import ReportGenerationTool, guard, template
from tools.report_generation.tool import rewrite_report

METADATA = {
    "Modality": "CT",
    "BodyPartExamined": "CHEST",
    "StudyDescription": "CT THORAX",
    "SliceThickness": "1.25",
}


def _lung_mask(voxels: int) -> np.ndarray:
    mask = np.zeros((4, 32, 32), dtype=bool)
    mask.flat[:voxels] = True
    return mask


def study_results() -> list[dict]:
    """What a chest CT job's earlier actions return: lung volumes, an image-type classification, and a
    grounding that failed on one lung."""
    segmentation = ToolResult(
        status=ToolStatus.OK,
        engine="LiteMedSAM",
        masks={"left lung": _lung_mask(900), "right lung": _lung_mask(1000)},
        boxes=[
            Box("left lung", 1, (2, 2, 10, 10), 1.0, 32, 32),
            Box("right lung", 1, (12, 2, 20, 10), 1.0, 32, 32),
        ],
        measurements=[
            Measurement("left lung", "Volume", 2345.6349, "mL"),
            Measurement("right lung", "Volume", 2567812.0, "mm3"),
            Measurement("right lung", "Area", 12.345, "cm2"),
        ],
    )
    classification = ToolResult(
        status=ToolStatus.OK,
        engine="BiomedCLIP",
        labels={"chest CT": 0.9234, "abdomen CT": 0.05, "brain MRI": 0.02, "chest X-ray": 0.0066},
    )
    grounding = ToolResult.failed("CT Hounsfield anatomy", "no liver found in this CT")
    return [
        segmentation.summary("grounded_segmentation"),
        classification.summary("classification"),
        grounding.summary("grounding"),
    ]


def _input(prior_results: list[dict], **params) -> ToolInput:
    return ToolInput(
        image=np.zeros((4, 32, 32), dtype=np.float32),
        spacing=(1.25, 0.7, 0.7),
        modality="CT",
        metadata=METADATA,
        prior_results=prior_results,
        params=params,
    )


def test_the_template_states_the_measurements_and_nothing_else() -> None:
    result = ReportGenerationTool(ModelsSection(device="cpu")).run(_input(study_results(), engine="template"))
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "Structured report template"
    text = result.text
    assert text.startswith("FINDINGS:\n") and "\n\nIMPRESSION:\n" in text
    for fact in (
        "2345.6 mL",
        "2567.8 mL",
        "1234.5 mm2",
        "chest CT (probability 0.92)",
        "slice thickness 1.25 mm",
    ):
        assert fact in text, fact
    assert "chest X-ray" not in text  # the 4th most probable label is left out, as the sentence says
    assert "3 most probable of 4 labels" in text
    assert (
        "Not assessed: grounding (CT Hounsfield anatomy) did not complete: no liver found in this CT." in text
    )
    assert guard.numbers(text) == {"1.25", "2345.6", "2567.8", "1234.5", "0.92", "0.05", "0.02", "3", "4"}
    stated = guard.concepts(json.dumps([study_results(), METADATA]))
    assert guard.concepts(text) <= stated  # every finding, organ and side comes from the input
    assert {"lung", "left", "right", "liver"} <= guard.concepts(text)
    sections = report_sections(text)
    assert [concept for concept, _ in sections] == [FINDING, IMPRESSION]
    assert "Volumes: left lung 2345.6 mL; right lung 2567.8 mL." in sections[1][1]


def test_nothing_found_and_nothing_to_report_are_said_plainly() -> None:
    empty_grounding = ToolResult(status=ToolStatus.OK, engine="CT Hounsfield anatomy").summary("grounding")
    missing = ToolResult(
        status=ToolStatus.OK, engine="LiteMedSAM", masks={"liver": np.zeros((2, 4, 4), bool)}
    )
    report = template.build_report([empty_grounding, missing.summary("segmentation")], {})
    assert "Grounding (CT Hounsfield anatomy): nothing found." in report.findings
    assert "Liver: not found (segmentation, LiteMedSAM)." in report.findings
    assert "Not found: liver." in report.impression
    result = ReportGenerationTool(ModelsSection(device="cpu")).run(_input([]))
    assert result.engine == "Structured report template"  # nothing to rewrite, no model asked
    assert result.text.count(template.NOTHING_TO_REPORT) == 2
    assert guard.concepts(result.text) == {"chest"}  # from the header only


@pytest.mark.parametrize(
    ("rewrite", "rule", "detail"),
    [
        (
            "FINDINGS:\nThe left lung measures 2345.6 mL with a small nodule.\n\nIMPRESSION:\nLeft lung 2345.6 mL.",
            guard.ADDS_TERM,
            "'nodule'",
        ),
        (
            "FINDINGS:\nThe left lung measures 2345.6 mL; a 12 mm opacity.\n\nIMPRESSION:\nLeft lung 2345.6 mL.",
            guard.ADDS_NUMBER,
            "12",
        ),
        (
            "FINDINGS:\nThe left lung was measured.\n\nIMPRESSION:\nLeft lung measured.",
            guard.DROPS_NUMBER,
            "2345.6",
        ),
        ("FINDINGS:\nThe left lung measures 2345.6 mL.", guard.CHANGES_SECTIONS, "findings"),
        (
            "FINDINGS:\nThe left lung measures 2345.6 mL.\n\nIMPRESSION:\n  ",
            guard.EMPTY,
            "the impression section",
        ),
        (
            "FINDINGS:\nThe left lung measures 2345.6 mL and is otherwise unremarkable.\n\nIMPRESSION:\nLeft lung 2345.6 mL.",
            guard.ADDS_TERM,
            "'normal'",
        ),
        (
            "FINDINGS:\nThe right lung measures 2345.6 mL.\n\nIMPRESSION:\nRight lung 2345.6 mL.",
            guard.ADDS_TERM,
            "'right'",
        ),
    ],
)
def test_the_guard_rejects_a_rewrite_that_adds_or_drops_facts(rewrite: str, rule: str, detail: str) -> None:
    report = "FINDINGS:\nLeft lung: volume 2345.6 mL (segmentation, LiteMedSAM).\n\nIMPRESSION:\nVolumes: left lung 2345.6 mL."
    verdict = guard.check_rewrite(report, rewrite)
    assert not verdict.accepted
    assert (verdict.rule, verdict.detail) == (rule, detail)


def test_the_guard_accepts_a_faithful_rewrite() -> None:
    report = template.build_report(study_results(), METADATA).text
    faithful = (
        "FINDINGS:\nA CT of the CHEST (CT THORAX) with 1.25 mm slices. Segmentation with LiteMedSAM gives a "
        "left lung volume of 2,345.60 mL and a right lung volume of 2567.8 mL, with an area of 1234.5 mm2. "
        "BiomedCLIP ranks chest CT first (0.92) of 4 labels, ahead of abdomen CT (0.05) and brain MRI (0.02), "
        "the 3 listed. Grounding did not complete: no liver found in this CT.\n\n"
        "IMPRESSION:\nLeft lung 2345.6 mL, right lung 2567.8 mL; chest CT (0.92). Grounding not assessed."
    )
    verdict = guard.check_rewrite(report, faithful)
    assert verdict.accepted, verdict.reason


def test_a_configured_random_llm_is_run_and_its_rewrite_rejected(tmp_path: Path) -> None:
    models = ModelsSection(device="cpu", llm=save_tiny_llama(tmp_path / "tiny-llama"))
    tool = ReportGenerationTool(models)
    assert [e.name for e in tool.engines()] == ["LLM tiny-llama", "Structured report template"]
    tool.load()
    result = tool.run(_input(study_results(), max_new_tokens=16))
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "Structured report template"
    expected = template.build_report(study_results(), METADATA, "CT").text
    assert result.text.startswith(expected + "\n\n(Text of the structured report template; ")
    assert "the LLM tiny-llama rewrite was rejected: it " in result.text
    model, tokenizer, _ = load_causal_lm(models, "cpu")
    rewrite = rewrite_report(template.build_report(study_results(), METADATA), model, tokenizer, None, 16)
    assert not guard.check_rewrite(expected, rewrite).accepted


def test_smollm2_rewrites_and_the_guard_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    tool = ReportGenerationTool(ModelsSection(device="cpu"))
    assert tool.readiness()[1].startswith(SMOLLM2_ENGINE)
    checked: list[tuple[str, str, guard.Verdict]] = []

    def spied_check(report: str, rewrite: str) -> guard.Verdict:
        checked.append((report, rewrite, guard_check(report, rewrite)))
        return checked[-1][2]

    guard_check = guard.check_rewrite
    monkeypatch.setattr(guard, "check_rewrite", spied_check)
    result = tool.run(_input(study_results()[:1], style="short", max_new_tokens=32))
    assert result.status is ToolStatus.OK, result.error
    [(report, rewrite, verdict)] = checked
    assert report == template.build_report(study_results()[:1], METADATA, "CT").text
    assert rewrite.startswith("FINDINGS:\n") and rewrite != report
    assert all(body for _, body in report_sections(rewrite)), rewrite  # SmolLM2 wrote both sections
    if verdict.accepted:
        assert result.engine == SMOLLM2_ENGINE and result.text.startswith(rewrite + "\n\n(Prose by ")
    else:
        assert result.engine == "Structured report template"
        assert result.text.startswith(report)
        assert f"rewrite was rejected: it {verdict.rule}." in result.text


def test_asking_for_an_llm_that_cannot_run_says_why(tmp_path: Path) -> None:
    result = ReportGenerationTool(ModelsSection(device="cpu", llm=tmp_path)).run(
        _input(study_results(), engine="llm")
    )
    assert result.status is ToolStatus.UNAVAILABLE
    assert "no config.json" in result.error and "engine 'template'" in result.error
