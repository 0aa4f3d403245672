"""MedSAM ViT-B through segment-anything: the real loading code, with a tiny randomly initialised ``Sam``.

No MedSAM weights can be had offline, so the checkpoint is a small network of the same classes saved the way
segment-anything checkpoints are (``torch.save(model.state_dict())``). Its masks are meaningless, so the
end-to-end test compares them with MedSAM's inference recipe written out here, on a non-square image where
swapped axes or unscaled prompts would show.
"""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from config.settings import ModelsSection
from tools.base import EngineKind, ToolInput, ToolStatus
from tools.segmentation import SegmentationTool, medsam_vit

FRAMES = (20, 30)
#: a non-square crop of the chest CT: 512 rows, 448 columns
COLUMNS = slice(32, 480)
LUNG_WINDOW = (-600.0, 1500.0)
BOXES = {"left lung": (224.0, 190.0, 380.0, 415.0), "right lung": (60.0, 190.0, 215.0, 415.0)}


def tiny_sam() -> Sam:
    """SAM's architecture at a fraction of its size: a 2-block, 64-wide ViT on a 1024-pixel input."""
    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=1024,
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=4.0,
            out_chans=32,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8),
            transformer_dim=32,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
    ).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("medsam") / "tiny_medsam_vit.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


def medsam_recipe(network, frame: np.ndarray, box=None, point=None) -> np.ndarray:
    """MedSAM's inference script: window to 0-1, resize to 1024x1024, prompts scaled by 1024/W and 1024/H."""
    rows, columns = frame.shape
    level, width = LUNG_WINDOW
    unit = np.clip((frame.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)
    image = torch.from_numpy(unit)[None, None].repeat(1, 3, 1, 1)
    image = F.interpolate(image, size=(1024, 1024), mode="bilinear", align_corners=False, antialias=True)
    factors = np.array([1024 / columns, 1024 / rows])
    boxes = points = None
    if box is not None:
        boxes = torch.tensor(np.asarray(box).reshape(2, 2) * factors, dtype=torch.float32).reshape(1, 1, 4)
    if point is not None:
        points = (
            torch.tensor((np.asarray(point) * factors)[None, None], dtype=torch.float32),
            torch.ones((1, 1)),
        )
    with torch.inference_mode():
        embedding = network.image_encoder(image)
        sparse, dense = network.prompt_encoder(points=points, boxes=boxes, masks=None)
        logits, _ = network.mask_decoder(
            image_embeddings=embedding,
            image_pe=network.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        probability = F.interpolate(torch.sigmoid(logits), size=(rows, columns), mode="bilinear")
    return (probability[0, 0] > 0.5).numpy()


def test_the_vit_b_layout_is_read_from_its_weights() -> None:
    reference = sam_model_registry["vit_b"]()
    state = reference.state_dict()
    architecture = medsam_vit.architecture_from_state_dict(state)
    assert architecture.image_size == 1024 and architecture.patch_size == 16
    assert (architecture.encoder_embed_dim, architecture.encoder_depth) == (768, 12)
    assert architecture.encoder_num_heads == 12
    assert architecture.encoder_global_attn_indexes == (2, 5, 8, 11)
    assert architecture.window_size == 14 and architecture.prompt_embed_dim == 256
    medsam_vit.build_sam(architecture).load_state_dict(state, strict=True)


def test_a_training_checkpoint_and_a_bare_state_dict_load_alike(tiny_checkpoint, tmp_path) -> None:
    wrapped = tmp_path / "medsam_model_best.pth"
    torch.save({"model": torch.load(tiny_checkpoint, weights_only=True), "epoch": 3}, wrapped)
    bare = medsam_vit.load_network(tiny_checkpoint, "cpu")
    loaded = medsam_vit.load_network(wrapped, "cpu")
    assert bare.image_encoder.img_size == 1024 and len(bare.image_encoder.blocks) == 2
    for (name, a), (_, b) in zip(bare.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_configured_checkpoint_runs_medsam_s_recipe_inside_each_box(chest_ct, tiny_checkpoint) -> None:
    tool = SegmentationTool(ModelsSection(medsam_checkpoint=tiny_checkpoint, device="cpu"))
    first = tool.engines()[0]
    assert (first.name, first.kind, first.ready) == ("MedSAM ViT-B", EngineKind.CONFIGURED, True)
    assert tool.readiness() == (True, f"MedSAM ViT-B: weights {tiny_checkpoint}")
    image = chest_ct.array[:, :, COLUMNS]
    boxes = [
        {"label": label, "frame": frame, "xyxy": list(xyxy)}
        for frame in FRAMES
        for label, xyxy in BOXES.items()
    ]
    point = (300.0, 300.0)
    points = [{"label": "left lung", "frame": FRAMES[0], "xy": list(point)}]
    result = tool.run(
        ToolInput(
            image=image, spacing=chest_ct.spacing, modality="CT", params={"boxes": boxes, "points": points}
        )
    )
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "MedSAM ViT-B"
    assert result.engine_version.startswith("tiny_medsam_vit.pth; segment-anything ")
    network = medsam_vit.load_network(tiny_checkpoint, "cpu")
    for label, (x0, y0, x1, y1) in BOXES.items():
        mask = result.masks[label]
        assert mask.dtype == bool and mask.shape == image.shape
        assert not np.delete(mask, FRAMES, axis=0).any()
        inside = np.zeros(image.shape[1:], bool)
        inside[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
        for frame in FRAMES:
            expected = medsam_recipe(network, image[frame], box=(x0, y0, x1, y1)) & inside
            if label == "left lung" and frame == FRAMES[0]:
                expected |= medsam_recipe(network, image[frame], point=point)
            else:
                assert not (mask[frame] & ~inside).any()
            assert np.array_equal(mask[frame], expected), (label, frame)


def test_a_file_that_is_no_sam_checkpoint_fails_naming_the_setting(tmp_path) -> None:
    not_a_checkpoint = tmp_path / "medsam_vit_b.pth"
    torch.save({"weight": torch.zeros(3)}, not_a_checkpoint)
    tool = SegmentationTool(ModelsSection(medsam_checkpoint=not_a_checkpoint, device="cpu"))
    with pytest.raises(ValueError, match="models.medsam_checkpoint .* not a segment-anything ViT checkpoint"):
        tool.load()
    result = tool.run(
        ToolInput(
            image=np.zeros((1, 64, 64), np.float32),
            spacing=None,
            modality="CT",
            params={"boxes": [{"label": "x", "frame": 0, "xyxy": [1, 1, 30, 30]}]},
        )
    )
    assert result.status is ToolStatus.FAILED and result.engine == "MedSAM ViT-B"
    assert "models.medsam_checkpoint" in result.error and "image_encoder" in result.error


def test_colour_frames_are_segmented_at_their_own_size(tiny_checkpoint) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 60, 80, 3), dtype=np.uint8)
    result = SegmentationTool(ModelsSection(medsam_checkpoint=tiny_checkpoint, device="cpu")).run(
        ToolInput(
            image=rgb,
            spacing=None,
            modality="SM",
            is_color=True,
            params={"boxes": [{"label": "nucleus", "frame": 1, "xyxy": [10, 5, 50, 40]}]},
        )
    )
    assert result.status is ToolStatus.OK, result.error
    mask = result.masks["nucleus"]
    assert mask.shape == (2, 60, 80) and mask.dtype == bool
    assert not mask[0].any() and not mask[1, 41:].any() and not mask[1, :, 51:].any()
    assert result.measurements == []


def test_grey_frames_without_a_window_are_scaled_by_their_percentiles(chest_ct, tiny_checkpoint) -> None:
    image = chest_ct.array[20:21].astype(np.float32)
    box = {"label": "structure", "frame": 0, "xyxy": [100, 120, 300, 330]}
    result = SegmentationTool(ModelsSection(medsam_checkpoint=tiny_checkpoint, device="cpu")).run(
        ToolInput(image=image, spacing=None, modality="MR", params={"boxes": [box]})
    )
    assert result.status is ToolStatus.OK, result.error
    assert result.masks["structure"].shape == image.shape
