from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from config.settings import ModelsSection
from tests.helpers.tiny_models import tiny_llama_config, tiny_tokenizer
from tools.base import EngineKind, Measurement, ToolInput, ToolResult, ToolStatus
from tools.vqa import VQATool, facts, llava_med

METADATA = {"Modality": "CT", "BodyPartExamined": "CHEST", "SliceThickness": "1.25"}
#: the image token and the tiny vision tower's geometry: a 30x30 image in 6x6 patches is 25 image tokens
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 30
PATCH_SIZE = 6
PROCESSOR_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} :"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %} <image>{% else %} {{ part['text'] }}"
    "{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)


def save_tiny_llava(folder: Path) -> Path:
    """A randomly initialised LlavaForConditionalGeneration (tiny CLIP vision tower, 2-layer LLaMA) and its
    LlavaProcessor, saved with ``save_pretrained`` as a converted LLaVA-Med folder is."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(special_tokens=(IMAGE_TOKEN,))
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=tiny_llama_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=PROCESSOR_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def study_results() -> list[dict]:
    segmentation = ToolResult(
        status=ToolStatus.OK,
        engine="LiteMedSAM",
        masks={"left lung": np.ones((2, 4, 4), bool), "right lung": np.ones((2, 4, 4), bool)},
        measurements=[
            Measurement("left lung", "Volume", 2345.6349, "mL"),
            Measurement("right lung", "Volume", 2567.81, "mL"),
        ],
    )
    classification = ToolResult(
        status=ToolStatus.OK, engine="BiomedCLIP", labels={"chest CT": 0.92, "pneumonia": 0.04}
    )
    return [segmentation.summary("grounded_segmentation"), classification.summary("classification")]


def _input(question: str, *, image: np.ndarray | None = None, **params) -> ToolInput:
    return ToolInput(
        image=image
        if image is not None
        else np.linspace(-1000, 400, 3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40),
        spacing=(1.25, 0.7, 0.7),
        modality="CT",
        window=(-600.0, 1500.0),
        metadata=METADATA,
        prior_results=study_results(),
        params={"question": question, **params} if question else params,
    )


def test_study_facts_answer_the_size_of_a_lung_with_its_unit() -> None:
    tool = VQATool(ModelsSection(device="cpu"))
    assert [(e.name, e.kind, e.ready) for e in tool.engines()][1] == (
        "Study facts",
        EngineKind.CLASSICAL,
        True,
    )
    result = tool.run(_input("How large is the left lung?"))
    assert result.status is ToolStatus.OK and result.engine == "Study facts"
    assert result.text == "Left lung: volume 2345.6 mL (grounded segmentation, LiteMedSAM)."
    both = tool.run(_input("What is the volume of the lungs?")).text
    assert "2345.6 mL" in both and "2567.8 mL" in both


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What modality is this?", "The modality is CT (computed tomography)."),
        ("Which body part was imaged?", "The body part examined is CHEST."),
        ("Is this an MRI?", "No: the modality is CT (computed tomography)."),
        ("What is the slice thickness?", "The slice thickness is 1.25 mm."),
        ("Is the right lung visible?", "Yes: the right lung was found (grounded segmentation, LiteMedSAM)."),
        (
            "Is there pneumonia?",
            "The classification gives 'pneumonia' a probability of 0.04 (classification, BiomedCLIP); this is a "
            "model's estimate, not a diagnosis.",
        ),
    ],
)
def test_study_facts_answer_from_the_header_and_the_tool_results(question: str, answer: str) -> None:
    assert VQATool(ModelsSection(device="cpu")).run(_input(question)).text == answer


@pytest.mark.parametrize(
    "question",
    [
        "Is there a nodule?",
        "How big is the liver?",
        "What is the patient's prognosis?",
        "Which view is this?",
    ],
)
def test_study_facts_refuse_what_the_study_does_not_tell(question: str) -> None:
    result = VQATool(ModelsSection(device="cpu")).run(_input(question))
    assert result.status is ToolStatus.OK
    assert result.text.startswith(facts.CANNOT_ANSWER)
    assert "nodule" not in result.text or "No tool looked for 'nodule'" in result.text


def test_the_instruction_is_the_question_when_none_is_given() -> None:
    tool_input = _input("")
    tool_input.instruction = "What was found?"
    text = VQATool(ModelsSection(device="cpu")).run(tool_input).text
    assert "Left lung: volume 2345.6 mL" in text and "chest CT (probability 0.92)" in text
    tool_input.instruction = ""
    empty = VQATool(ModelsSection(device="cpu")).run(tool_input)
    assert empty.status is ToolStatus.FAILED and "no question" in empty.error


def test_llava_med_answers_from_the_image(tiny_llava: Path) -> None:
    tool = VQATool(ModelsSection(device="cpu", llava_med=tiny_llava))
    engine = tool.engines()[0]
    assert (engine.name, engine.kind, engine.ready) == ("LLaVA-Med", EngineKind.CONFIGURED, True), (
        engine.reason
    )
    tool.load()
    result = tool.run(_input("what is shown in this image", max_new_tokens=6))
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "LLaVA-Med" and result.engine_version.startswith("llava ")
    assert isinstance(result.text, str) and result.text
    facts_result = tool.run(_input("How large is the left lung?", engine="facts"))
    assert facts_result.engine == "Study facts" and "2345.6 mL" in facts_result.text


def test_llava_med_sees_the_middle_frame_through_the_window(tiny_llava: Path) -> None:
    """The model's input is the windowed middle frame: changing another frame changes nothing."""
    model, processor = llava_med.load(ModelsSection(device="cpu", llava_med=tiny_llava), "cpu")
    volume = np.full((3, 40, 40), -1000.0, dtype=np.float32)
    volume[1, :, 20:] = 400.0
    rgb = llava_med.middle_frame_rgb(volume, False, (-600.0, 1500.0))
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    # level -600, width 1500: -1000 HU is 350/1500 of the way up (60 of 255), 400 HU is above the window
    assert rgb[0, 0].tolist() == [60, 60, 60] and rgb[0, 39].tolist() == [255, 255, 255]
    colour = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    colour[1, ..., 0] = 200
    assert llava_med.middle_frame_rgb(colour, True, None)[..., 0].max() == 200
    prompt = llava_med.prompt_text(processor, "what is shown")
    assert prompt == "user : <image> what is shown\nassistant :"
    first = llava_med.answer(model, processor, rgb, "what is shown", 4)
    volume[0] = 400.0
    again = llava_med.answer(
        model, processor, llava_med.middle_frame_rgb(volume, False, (-600.0, 1500.0)), "what is shown", 4
    )
    assert first == again


def test_a_llava_folder_in_the_original_format_says_how_to_convert(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_mistral"}))
    tool = VQATool(ModelsSection(device="cpu", llava_med=tmp_path))
    engine = tool.engines()[0]
    assert not engine.ready and "'llava_mistral' model" in engine.reason and "convert" in engine.reason
    assert tool.run(_input("What modality is this?")).engine == "Study facts"  # the default falls back
    asked = tool.run(_input("What is shown?", engine="llava-med"))
    assert asked.status is ToolStatus.UNAVAILABLE and "engine 'facts'" in asked.error
