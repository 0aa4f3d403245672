"""The DICOM header engine on the headers of real files from ../shared/data."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.multival import MultiValue

from config.settings import ModelsSection
from tests.helpers.peers import shared_data
from tools.base import ToolInput, ToolStatus
from tools.classification import ClassificationTool
from tools.classification.header import multi_values, read_header

#: what a pipeline leaves out of ToolInput.metadata: identifiers and anything that is not text
IDENTIFYING = {"PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber"}


def header_metadata(folder: str) -> dict[str, str]:
    """The first file's header as a pipeline hands it to a tool: keyword -> string, multi-values joined
    DICOM-style with a backslash, no sequences, binary values, UIDs or patient identifiers."""
    path = sorted(shared_data(folder).glob("*.dcm"))[0]
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    metadata = {}
    for element in dataset:
        if not element.keyword or element.VR in ("SQ", "OB", "OW", "OF", "UN", "UI"):
            continue
        if element.keyword in IDENTIFYING or element.value is None:
            continue
        value = element.value
        metadata[element.keyword] = (
            "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
        )
    return metadata


def classify(metadata: dict[str, str], **params) -> object:
    tool = ClassificationTool(ModelsSection(device="cpu"))
    return tool.run(
        ToolInput(
            image=np.zeros((1, 4, 4), np.float32),
            spacing=None,
            modality=metadata.get("Modality", ""),
            body_part=metadata.get("BodyPartExamined", ""),
            metadata=metadata,
            params=params,
        )
    )


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("ct_chest_lidc0314", {"lung CT": 1.0, "chest": 1.0}),
        ("mr_brain_t1_sag_siemens", {"brain MRI": 1.0, "brain": 1.0}),
        ("cr_chest_philips_j2k", {"chest X-ray": 1.0, "chest": 1.0}),
        ("us_ge_logiq700_rgb", {"small parts ultrasound": 1.0}),
        ("us_philips_cx50_palette", {"obstetric ultrasound": 1.0}),
        ("sm_wsi_cmu1_jpeg", {"histopathology": 1.0}),
        ("ts_mr_siemens_trio_5ts", {"MRI": 1.0}),
    ],
)
def test_real_headers_give_what_they_state(folder, expected) -> None:
    result = classify(header_metadata(folder))
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "DICOM header" and result.engine_version
    assert result.labels == expected
    assert result.text.startswith("From the DICOM header")


def test_the_text_names_the_attributes_it_read() -> None:
    chest_x_ray = classify(header_metadata("cr_chest_philips_j2k"))
    assert "Modality CR" in chest_x_ray.text and "BodyPartExamined CHEST" in chest_x_ray.text
    assert "The view is PA." in chest_x_ray.text
    slide = classify(header_metadata("sm_wsi_cmu1_jpeg"))
    assert "does not name the stain" in slide.text


def test_a_named_stain_gives_mmedagents_histopathology_label() -> None:
    metadata = header_metadata("sm_wsi_cmu1_jpeg")
    stained = classify({**metadata, "SeriesDescription": "CMU-1 H&E 20x"})
    assert stained.labels == {"hematoxylin and eosin histopathology": 1.0}
    assert classify({**metadata, "SeriesDescription": "Ki-67 IHC"}).labels == {
        "immunohistochemistry histopathology": 1.0
    }
    both = classify({**metadata, "SeriesDescription": "H&E", "ProtocolName": "IHC panel"})
    assert both.labels == {"histopathology": 1.0}


def test_descriptions_give_the_region_when_body_part_is_missing() -> None:
    metadata = header_metadata("cr_chest_philips_j2k")
    del metadata["BodyPartExamined"]
    result = classify(metadata)  # StudyDescription THORAX
    assert result.labels == {"chest X-ray": 1.0, "chest": 1.0}
    assert "StudyDescription mentions THORAX" in result.text
    several = classify({"Modality": "CT", "StudyDescription": "CT HEAD", "SeriesDescription": "KNEE"})
    assert several.labels == {"CT": 1.0} and "several regions" in several.text
    pair = classify({"Modality": "CT", "StudyDescription": "CT ABDOMEN PELVIS W CONTRAST"})
    assert pair.labels == {"abdomen CT": 1.0, "abdomen and pelvis": 1.0}


def test_image_type_refines_the_modality() -> None:
    metadata = header_metadata("ct_chest_lidc0314")
    localizer = classify({**metadata, "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"})
    assert localizer.labels == {"CT localizer": 1.0, "chest": 1.0}
    knee = classify({"Modality": "DX", "BodyPartExamined": "KNEE"})
    assert knee.labels == {"bone X-ray": 1.0, "knee": 1.0}
    assert multi_values("['ORIGINAL', 'PRIMARY', 'SMALL PARTS']") == ["ORIGINAL", "PRIMARY", "SMALL PARTS"]
    assert read_header({"Modality": "US", "ImageType": "['ORIGINAL', 'PRIMARY', 'ABDOMINAL']"}).labels() == {
        "abdominal ultrasound": 1.0,
        "abdomen": 1.0,
    }


def test_a_header_that_states_nothing_useful_is_unavailable_and_says_why() -> None:
    result = classify({"Modality": "OT", "SeriesDescription": "Secondary capture"})
    assert result.status is ToolStatus.UNAVAILABLE and not result.labels
    assert "Modality OT" in result.error and "models.biomedclip" in result.error
    unknown_part = classify({"Modality": "OT", "BodyPartExamined": "XYZZY"})
    assert unknown_part.status is ToolStatus.UNAVAILABLE


def test_candidate_labels_are_confirmed_in_the_planners_words() -> None:
    metadata = header_metadata("ct_chest_lidc0314")
    result = classify(metadata, labels=["chest CT", "brain MRI", "chest"])
    assert result.status is ToolStatus.OK
    assert result.labels == {"chest CT": 1.0, "chest": 1.0}
    assert "cannot decide ['brain MRI']" in result.text
    assert classify(metadata, labels=["chest CT", "chest"], top_k=1).labels == {"chest": 1.0}
    none_confirmed = classify(header_metadata("mr_brain_t1_sag_siemens"), labels=["pie chart"])
    assert none_confirmed.status is ToolStatus.UNAVAILABLE
    assert "brain MRI" in none_confirmed.error and "pie chart" in none_confirmed.error


def test_bad_parameters_fail_with_the_parameter_named() -> None:
    metadata = header_metadata("ct_chest_lidc0314")
    zero = classify(metadata, top_k=0)
    assert zero.status is ToolStatus.FAILED and "'top_k'" in zero.error
    empty = classify(metadata, labels=["  "])
    assert empty.status is ToolStatus.FAILED and "'labels'" in empty.error


def test_modality_and_body_part_of_the_tool_input_stand_in_for_missing_metadata() -> None:
    tool = ClassificationTool(ModelsSection(device="cpu"))
    result = tool.run(
        ToolInput(image=np.zeros((1, 4, 4), np.float32), spacing=None, modality="MR", body_part="HEAD")
    )
    assert result.status is ToolStatus.OK and result.labels == {"brain MRI": 1.0, "head": 1.0}
