"""The Grounding DINO engine's real loading and inference code, with a tiny randomly initialised model.

The model has Grounding DINO's architecture (Swin backbone, BERT text encoder, deformable encoder and
decoder) at a few hundred kilobytes, saved with ``save_pretrained`` beside its processor, as a user's
weights folder would be.
"""

import pytest

from config.settings import ModelsSection
from tools.base import EngineKind, ToolInput, ToolStatus, clear_model_cache
from tools.grounding import GroundingTool
from tools.grounding.grounding_dino import caption, label_for_phrase

VOCABULARY = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ".",
    "left",
    "right",
    "lung",
    "body",
    "bone",
    "air",
]
PROMPTS = ["left lung", "right lung"]


@pytest.fixture(scope="module")
def grounding_dino_folder(tmp_path_factory):
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder = tmp_path_factory.mktemp("grounding_dino")
    vocabulary = folder / "vocab.txt"
    vocabulary.write_text("\n".join(VOCABULARY) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocabulary), do_lower_case=True)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 160})
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=128, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=len(VOCABULARY), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64,
        ),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2,
        num_queries=20, max_text_len=32, disable_custom_kernels=True,
    )  # fmt: skip
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    vocabulary.unlink()  # the processor wrote its own copy; what loads must come from save_pretrained
    yield folder
    clear_model_cache()


def _slice_input(chest_ct, **params):
    middle = chest_ct.array.shape[0] // 2
    return ToolInput(
        image=chest_ct.array[middle : middle + 1],
        spacing=chest_ct.spacing,
        modality="CT",
        row_direction=tuple(chest_ct.row_direction),
        column_direction=tuple(chest_ct.column_direction),
        params={"prompts": ["Lungs"], **params},
        window=(-600.0, 1500.0),
    )


def test_the_caption_joins_prompts_as_mmedagent_did() -> None:
    assert caption(PROMPTS) == "left lung . right lung ."
    assert caption(["liver."]) == "liver ."


def test_a_phrase_is_labelled_with_the_prompt_it_names() -> None:
    assert label_for_phrase("left lung", PROMPTS) == "left lung"
    assert label_for_phrase("right", PROMPTS) == "right lung"
    assert label_for_phrase("lung", PROMPTS) == "lung"  # both prompts equally: the phrase is kept
    assert label_for_phrase("left lung. right lung", PROMPTS) == "left lung. right lung"
    assert label_for_phrase("", PROMPTS) == ""


def test_the_engine_is_ready_once_configured_and_preferred(grounding_dino_folder, tmp_path) -> None:
    tool = GroundingTool(ModelsSection(grounding_dino=grounding_dino_folder, device="cpu"))
    first = tool.engines()[0]
    assert (first.name, first.kind, first.ready) == ("Grounding DINO", EngineKind.CONFIGURED, True)
    assert tool.readiness()[1].startswith("Grounding DINO: weights ")
    empty = GroundingTool(ModelsSection(grounding_dino=tmp_path, device="cpu")).engines()[0]
    assert not empty.ready and "config.json" in empty.reason and "save_pretrained" in empty.reason


def test_a_ct_slice_runs_end_to_end_at_the_default_thresholds(grounding_dino_folder, chest_ct) -> None:
    tool = GroundingTool(ModelsSection(grounding_dino=grounding_dino_folder, device="cpu"))
    tool.load()
    result = tool.run(_slice_input(chest_ct))
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "Grounding DINO" and "transformers" in result.engine_version
    assert not result.masks
    # random weights may find anything or nothing; what comes back must be well formed
    for box in result.boxes:
        assert box.score > 0.3 and box.label and box.frame == 0


def test_every_box_is_in_the_frame_with_a_score_and_a_label(grounding_dino_folder, chest_ct) -> None:
    tool = GroundingTool(ModelsSection(grounding_dino=grounding_dino_folder, device="cpu"))
    result = tool.run(_slice_input(chest_ct, box_threshold=0.0, text_threshold=0.0))
    assert result.status is ToolStatus.OK, result.error
    assert 0 < len(result.boxes) <= 20  # at most one per query
    rows, columns = chest_ct.array.shape[1:]
    for box in result.boxes:
        x0, y0, x1, y1 = box.xyxy
        assert 0 <= x0 < x1 <= columns - 1 and 0 <= y0 < y1 <= rows - 1, box
        assert (box.frame, box.rows, box.columns) == (0, rows, columns)
        assert 0.0 <= box.score <= 1.0
        assert set(box.label.replace(".", " ").split()) <= {"left", "right", "lung"}, box.label
    strict = tool.run(_slice_input(chest_ct, box_threshold=0.999, text_threshold=0.999))
    assert strict.status is ToolStatus.OK and len(strict.boxes) < len(result.boxes)


def test_a_folder_that_does_not_load_says_which_and_why(tmp_path, chest_ct) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    result = GroundingTool(ModelsSection(grounding_dino=tmp_path, device="cpu")).run(_slice_input(chest_ct))
    assert result.status is ToolStatus.FAILED and result.engine == "Grounding DINO"
    assert str(tmp_path) in result.error and "does not load" in result.error
