"""What the pipeline hands a tool: pixels the way round a viewer shows them, metadata, earlier results."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.errors import NodeError
from dicom_node.pipeline import resolve_references, tool_input_for
from tools.base import Box, Measurement, ToolResult, ToolStatus


def test_monochrome1_radiograph_reaches_tools_bright_where_the_viewer_is_bright(chest_cr) -> None:
    assert chest_cr.inverted  # the CR is MONOCHROME1: high stored values are shown dark
    tool_input = tool_input_for(chest_cr, {}, "", "cpu")
    shown = chest_cr.display_array()[0].ravel()[::101]
    given = tool_input.image[0].ravel()[::101]
    assert np.corrcoef(shown, given)[0, 1] > 0.9
    assert np.corrcoef(shown, chest_cr.array[0].ravel()[::101])[0, 1] < -0.9  # what it would have been
    # the source window is mirrored with the values: the same pixels are mid-grey under it
    center, _ = tool_input.window
    low, high = float(chest_cr.array.min()), float(chest_cr.array.max())
    assert center == pytest.approx(low + high - chest_cr.window[0])
    assert not tool_input.is_color and tool_input.modality == "CR"


def test_ct_keeps_hounsfield_units_and_metadata_holds_no_identifiers(chest_ct) -> None:
    tool_input = tool_input_for(chest_ct, {"prompts": ["lungs"]}, "Segment the lungs", "cpu")
    assert tool_input.image is chest_ct.array  # not inverted, not copied
    assert tool_input.metadata["Modality"] == "CT"
    assert "ImageType" in tool_input.metadata and "\\" in tool_input.metadata["ImageType"]
    for identifier in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
        assert identifier not in tool_input.metadata
    assert tool_input.spacing == chest_ct.spacing and tool_input.instruction == "Segment the lungs"


def _grounding_result() -> ToolResult:
    return ToolResult(
        status=ToolStatus.OK,
        engine="CT Hounsfield anatomy",
        boxes=[Box("left lung", 3, (10.0, 20.0, 30.0, 40.0), 1.0, 64, 64)],
        masks={"left lung": np.zeros((4, 64, 64), dtype=bool)},
        measurements=[Measurement("left lung", "Volume", 1.5, "mL")],
    )


def test_references_take_the_earlier_actions_output() -> None:
    prior = [_grounding_result()]
    params = resolve_references({"boxes": "$0.boxes", "prompts": "$0.prompts", "window": [40, 400]}, prior)
    assert params == {
        "boxes": [{"label": "left lung", "frame": 3, "xyxy": [10.0, 20.0, 30.0, 40.0]}],
        "prompts": ["left lung"],
        "window": [40, 400],
    }
    assert resolve_references({"m": "$0.measurements"}, prior)["m"][0]["value"] == 1.5


def test_a_reference_to_a_failed_or_empty_output_stops_the_action() -> None:
    failed = ToolResult.failed("CT Hounsfield anatomy", "no left lung found in this CT")
    with pytest.raises(NodeError, match=r"boxes = '\$0\.boxes': action 0 ended failed: no left lung"):
        resolve_references({"boxes": "$0.boxes"}, [failed])
    with pytest.raises(NodeError, match="returned no labels"):
        resolve_references({"labels": "$0.labels"}, [_grounding_result()])
    with pytest.raises(NodeError, match="no output named 'pixels'"):
        resolve_references({"x": "$0.pixels"}, [_grounding_result()])
