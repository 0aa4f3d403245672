"""The segmentation tool's contract: its engines, its parameters, and the errors a person can act on.

These tests load no network: each request fails or is refused before the weights are needed.
"""

import jsonschema
import numpy as np
import pytest
import torch

from config.settings import ModelsSection
from tools.base import EngineKind, ToolInput, ToolStatus
from tools.grounded_segmentation import GroundedSegmentationTool
from tools.segmentation import SegmentationTool

BOX = {"label": "lesion", "frame": 0, "xyxy": [4, 4, 40, 40]}
POINT = {"label": "lesion", "frame": 0, "xy": [20, 20]}


def _input(**params) -> ToolInput:
    return ToolInput(image=np.zeros((2, 64, 48), np.float32), spacing=None, modality="MR", params=params)


@pytest.fixture
def medsam_models(tmp_path) -> ModelsSection:
    """Settings naming a checkpoint file; these tests never get as far as loading it."""
    path = tmp_path / "medsam_vit_b.pth"
    torch.save({}, path)
    return ModelsSection(medsam_checkpoint=path, device="cpu")


def test_without_a_configured_checkpoint_litemedsam_runs_and_medsam_says_which_key_to_set() -> None:
    tool = SegmentationTool(ModelsSection(device="cpu"))
    medsam, lite = tool.engines()
    assert (medsam.name, medsam.kind, medsam.ready) == ("MedSAM ViT-B", EngineKind.CONFIGURED, False)
    assert "set models.medsam_checkpoint" in medsam.reason
    assert (lite.name, lite.kind, lite.ready) == ("LiteMedSAM", EngineKind.PRETRAINED, True)
    ready, reason = tool.readiness()
    assert ready and reason.startswith("LiteMedSAM: weights ")


def test_a_configured_checkpoint_comes_first(medsam_models) -> None:
    tool = SegmentationTool(medsam_models)
    assert [e.name for e in tool.engines() if e.ready] == ["MedSAM ViT-B", "LiteMedSAM"]
    assert tool.preferred_engine().name == "MedSAM ViT-B"


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        ({"boxes": [BOX]}, True),
        ({"points": [POINT]}, True),
        ({"points": [{**POINT, "positive": False}], "boxes": [BOX], "window": [40, 400]}, True),
        ({}, False),
        ({"window": [40, 400]}, False),
        ({"points": [{**POINT, "xy": [1, 2, 3]}]}, False),
        ({"points": [{**POINT, "radius": 3}]}, False),
        ({"boxes": [BOX], "masks": []}, False),
    ],
)
def test_the_schema_wants_boxes_or_points(params, valid) -> None:
    validator = jsonschema.Draft202012Validator(SegmentationTool.card.parameters)
    assert validator.is_valid(params) is valid


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "needs 'boxes' or 'points'"),
        ({"boxes": "$0.boxes"}, "unresolved reference '$0.boxes'"),
        ({"points": [{**POINT, "frame": 2}]}, "point on frame 2 is outside 0..1"),
        ({"points": [{**POINT, "xy": [50, 20]}]}, "outside the 48x64 image"),
        ({"points": [{"label": "lesion", "frame": 0}]}, "points[0]"),
        (
            {"points": [{**POINT, "positive": False}, {**POINT, "xy": [5, 5], "positive": False}]},
            "'lesion' on frame 0 are all negative",
        ),
    ],
)
def test_requests_that_cannot_be_segmented_fail_with_a_reason(medsam_models, params, message) -> None:
    result = SegmentationTool(medsam_models).run(_input(**params))
    assert result.status is ToolStatus.FAILED
    assert message in result.error


def test_points_that_seed_no_boxable_region_fail_with_a_reason_on_litemedsam() -> None:
    """A blank frame: the click's region is the whole frame, so there is no box to give LiteMedSAM."""
    result = SegmentationTool(ModelsSection(device="cpu")).run(_input(points=[POINT]))
    assert result.status is ToolStatus.FAILED and result.engine == "LiteMedSAM"
    assert "'lesion' on frame 0" in result.error and "give a box" in result.error


def test_grounded_segmentation_hands_its_models_to_both_tools(medsam_models) -> None:
    tool = GroundedSegmentationTool(medsam_models)
    assert tool.grounding.models is medsam_models and tool.segmentation.models is medsam_models
    names = [engine.name for engine in tool.engines()]
    assert [name.split(" + ")[-1] for name in names] == ["MedSAM ViT-B", "LiteMedSAM"]
    assert tool.readiness()[0]
