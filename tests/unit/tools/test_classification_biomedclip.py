"""The BiomedCLIP engine through its real loading code, on a tiny random model in BiomedCLIP's on-disk layout.

The folder is what the hub publishes (``open_clip_config.json``, ``open_clip_pytorch_model.bin``, tokenizer
files at the top) plus the text tower's ``config.json`` in a subfolder named after ``hf_model_name``. The
vision tower is timm's ``test_vit`` (a ViT, as BiomedCLIP's ``vit_base_patch16_224``), the text tower a
two-layer BERT (as PubMedBERT); the pooler and projections are BiomedCLIP's.
"""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from agent_core.protocol import Action, Plan, PlanError
from agent_core.registry import ToolRegistry
from config.settings import ModelsSection
from tools.base import EngineKind, ToolInput, ToolStatus, clear_model_cache
from tools.classification import ClassificationTool, biomedclip
from tools.classification.labels import IMAGE_TYPE_LABELS

TEXT_MODEL_NAME = "tiny-org/tiny-biomedbert"
WORDS = (
    "this is a photo of chest x - ray brain mri lung ct abdomen bone pie chart covid line diagnostic flowchart "
    "scatter plot adenocarcinoma squamous cell carcinoma immunohistochemistry hematoxylin and eosin "
    "histopathology gross"
).split()


def _model_cfg(text_model: str) -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 160,
        },
        "text_cfg": {
            "hf_model_name": text_model,
            "hf_tokenizer_name": text_model,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 32,
        },
    }


def _write_tiny_biomedclip(folder):
    """A random BiomedCLIP-shaped model saved as BiomedCLIP is published; returns the in-memory model."""
    from open_clip.model import CustomTextCLIP
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir()
    vocabulary = folder / "vocab.txt"
    vocabulary.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]) + "\n"
    )
    BertTokenizerFast(vocab_file=str(vocabulary), do_lower_case=True).save_pretrained(folder)
    text_folder = folder / TEXT_MODEL_NAME.split("/")[-1]
    torch.manual_seed(0)
    bert = BertConfig(
        vocab_size=len(vocabulary.read_text().split()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(bert).save_pretrained(text_folder)
    model_cfg = _model_cfg(TEXT_MODEL_NAME)
    built_cfg = json.loads(json.dumps(model_cfg))
    built_cfg["text_cfg"].update(hf_model_name=str(text_folder), hf_model_pretrained=False)
    model = CustomTextCLIP(**built_cfg).eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    preprocess_cfg = {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=1)
    )
    return model


@pytest.fixture(scope="module")
def tiny_biomedclip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "BiomedCLIP-tiny"
    model = _write_tiny_biomedclip(folder)
    clear_model_cache()
    yield folder, model
    clear_model_cache()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: weights are never downloaded."""

    def refuse(self, address):
        raise AssertionError(f"network access to {address} while loading BiomedCLIP")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _grey_input(**overrides) -> ToolInput:
    rng = np.random.default_rng(3)
    values = dict(
        image=rng.normal(0.0, 300.0, size=(5, 48, 40)).astype(np.float32),
        spacing=(1.0, 0.7, 0.7),
        modality="CT",
        window=(-600.0, 1500.0),
        device="cpu",
    )
    values.update(overrides)
    return ToolInput(**values)


def test_zero_shot_scores_the_given_labels_with_the_saved_weights(tiny_biomedclip, no_network) -> None:
    folder, original = tiny_biomedclip
    tool = ClassificationTool(ModelsSection(biomedclip=folder, device="cpu"))
    labels = ["chest X-ray", "brain MRI", "lung CT"]
    result = tool.run(_grey_input(params={"labels": labels}))
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "BiomedCLIP"
    assert "BiomedCLIP-tiny" in result.engine_version and "open_clip" in result.engine_version
    assert set(result.labels) == set(labels)
    assert sum(result.labels.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in result.labels.values())
    # The same frame, preprocessing and prompts through the model as it was before saving.
    classifier = tool._classifier("cpu")
    frame, index = biomedclip.display_frame(_grey_input().image, False, (-600.0, 1500.0))
    assert index == 2
    image = classifier.preprocess(Image.fromarray(frame)).unsqueeze(0)
    texts = classifier.tokenizer([f"this is a photo of {label}" for label in labels])
    with torch.no_grad():
        image_features, text_features, scale = original(image, texts)
        expected = (scale * image_features @ text_features.T).softmax(dim=-1)[0].numpy()
    assert [result.labels[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-5)


def test_default_labels_are_mmedagents_14_and_top_k_keeps_the_most_probable(tiny_biomedclip) -> None:
    folder, _ = tiny_biomedclip
    tool = ClassificationTool(ModelsSection(biomedclip=folder, device="cpu"))
    everything = tool.run(_grey_input())
    assert everything.status is ToolStatus.OK, everything.error
    assert set(everything.labels) == set(IMAGE_TYPE_LABELS) and len(IMAGE_TYPE_LABELS) == 14
    assert sum(everything.labels.values()) == pytest.approx(1.0, abs=1e-5)
    best_three = tool.run(_grey_input(params={"top_k": 3}))
    ranked = sorted(everything.labels, key=lambda label: -everything.labels[label])[:3]
    assert list(best_three.labels) == ranked
    assert best_three.labels == pytest.approx({label: everything.labels[label] for label in ranked})


def test_colour_frames_are_classified_as_they_are(tiny_biomedclip) -> None:
    folder, _ = tiny_biomedclip
    tool = ClassificationTool(ModelsSection(biomedclip=folder, device="cpu"))
    rgb = np.zeros((3, 40, 40, 3), dtype=np.uint8)
    rgb[1, :, :, 0] = 200
    red = tool.run(_grey_input(image=rgb, is_color=True, window=None, modality="SM"))
    rgb[1, :, :, 0], rgb[1, :, :, 2] = 0, 200
    blue = tool.run(_grey_input(image=rgb, is_color=True, window=None, modality="SM"))
    assert red.status is blue.status is ToolStatus.OK
    assert red.labels != pytest.approx(blue.labels, abs=1e-6)


def test_a_single_candidate_is_refused_because_it_would_always_score_one(tiny_biomedclip) -> None:
    folder, _ = tiny_biomedclip
    tool = ClassificationTool(ModelsSection(biomedclip=folder, device="cpu"))
    result = tool.run(_grey_input(params={"labels": ["chest X-ray"]}))
    assert result.status is ToolStatus.FAILED and "at least two candidate labels" in result.error


def test_load_caches_the_model_for_run(tiny_biomedclip, monkeypatch) -> None:
    folder, _ = tiny_biomedclip
    tool = ClassificationTool(ModelsSection(biomedclip=folder, device="cpu"))
    tool.load()

    def reload(*args, **kwargs):
        raise AssertionError("BiomedCLIP was loaded a second time")

    monkeypatch.setattr(biomedclip, "load_classifier", reload)
    assert tool.run(_grey_input(params={"labels": ["bone X-ray", "chest X-ray"]})).status is ToolStatus.OK


def test_grey_frames_are_windowed_or_stretched() -> None:
    volume = np.stack([np.full((2, 3), value, np.float32) for value in (0.0, -160.0, 0.0)])
    volume[1, 0, 0] = 240.0
    windowed, index = biomedclip.display_frame(volume, False, (40.0, 400.0))
    assert index == 1 and windowed.shape == (2, 3, 3) and windowed.dtype == np.uint8
    assert windowed[0, 0].tolist() == [255, 255, 255] and windowed[1, 1].tolist() == [0, 0, 0]
    stretched, _ = biomedclip.display_frame(volume, False, None)
    assert stretched[0, 0, 0] == 255 and stretched[1, 2, 0] == 0
    with pytest.raises(ValueError, match=r"expected \[frame, row, column, 3\]"):
        biomedclip.display_frame(volume, True, None)


def test_engines_say_what_is_missing(tiny_biomedclip, tmp_path) -> None:
    unconfigured = ClassificationTool(ModelsSection(device="cpu"))
    clip, header_engine = unconfigured.engines()
    assert (clip.name, clip.kind, clip.ready) == ("BiomedCLIP", EngineKind.CONFIGURED, False)
    assert "models.biomedclip" in clip.reason
    assert (header_engine.name, header_engine.kind, header_engine.ready) == (
        "DICOM header",
        EngineKind.CLASSICAL,
        True,
    )
    assert unconfigured.readiness()[1].startswith("DICOM header")

    folder, _ = tiny_biomedclip
    configured = ClassificationTool(ModelsSection(biomedclip=folder, device="cpu"))
    assert configured.readiness() == (
        True,
        f"BiomedCLIP: weights {folder.resolve()}/open_clip_pytorch_model.bin",
    )

    without_text_config = tmp_path / "copy"
    shutil.copytree(folder, without_text_config)
    shutil.rmtree(without_text_config / "tiny-biomedbert")
    broken = ClassificationTool(ModelsSection(biomedclip=without_text_config, device="cpu"))
    status = broken.engines()[0]
    assert not status.ready and "tiny-org/tiny-biomedbert" in status.reason and "config.json" in status.reason
    # It falls back to the engine that can run, and says so in the result.
    result = broken.run(_grey_input(metadata={"Modality": "CT", "BodyPartExamined": "CHEST"}))
    assert result.engine == "DICOM header" and result.labels == {"lung CT": 1.0, "chest": 1.0}


def test_text_tower_and_tokenizer_are_found_by_their_config_names(tmp_path) -> None:
    folder = tmp_path / "biomedclip"
    nested = folder / "tiny-org" / "tiny-biomedbert"
    nested.mkdir(parents=True)
    (nested / "config.json").write_text('{"model_type": "bert"}')
    (nested / "vocab.txt").write_text("[PAD]\n")
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": _model_cfg(TEXT_MODEL_NAME)}))
    located = biomedclip.BiomedClipFolder.read(folder)
    assert located.text_model == located.tokenizer == nested.resolve()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": _model_cfg("tiny-org/other")}))
    with pytest.raises(FileNotFoundError, match="'tiny-org/other' has no local config.json"):
        biomedclip.BiomedClipFolder.read(folder)
    (folder / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    with pytest.raises(ValueError, match="needs 'model_cfg'"):
        biomedclip.BiomedClipFolder.read(folder)


def test_registry_finds_the_tool_by_mmedagents_name_and_checks_its_parameters() -> None:
    registry = ToolRegistry([ClassificationTool(ModelsSection(device="cpu"))])
    assert registry.canonical_name("BiomedClip") == "classification"
    plan = Plan("", (Action("BiomedClip", {"labels": ["chest X-ray", "brain MRI"], "top_k": 1}),), "")
    assert registry.validate(plan).actions[0].API_name == "classification"
    with pytest.raises(PlanError, match="top_k"):
        registry.validate(Plan("", (Action("classification", {"top_k": 0}),), ""))
    with pytest.raises(PlanError):
        registry.validate(Plan("", (Action("classification", {"prompts": ["lung"]}),), ""))
