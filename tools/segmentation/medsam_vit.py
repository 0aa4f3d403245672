"""MedSAM ViT-B through ``segment-anything``, from a checkpoint the user names in ``models.medsam_checkpoint``.

The checkpoint is segment-anything's ``.pth`` format: a ``state_dict`` of ``Sam`` (or a training checkpoint
holding it under ``"model"``, as MedSAM's training script saves). The network is built from the shapes in
that state dict rather than from a fixed registry entry, so MedSAM ViT-B, SAM ViT-B/L/H and a small model of
the same architecture all load through the same code.

Preprocessing follows MedSAM's inference script: the frame is windowed and scaled to 0-1 (no SAM pixel
mean/std), resized to the encoder's square input (1024x1024 for ViT-B) without keeping the aspect ratio,
prompts are scaled by the same factors, the sigmoid of the low-resolution logits is resized back to the
frame and thresholded at 0.5.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tools.segmentation.sam import FramePrompt, frame_tensor, prompt_logits

logger = logging.getLogger(__name__)

ENGINE_NAME = "MedSAM ViT-B"
CONFIG_KEY = "models.medsam_checkpoint"
#: Boxes, as MedSAM was trained, and points, which SAM checkpoints (and point-trained MedSAM ones) answer.
PROMPT_KINDS = frozenset({"box", "point"})
#: The heads of the mask decoder's transformer leave no trace in the weights; SAM and MedSAM use 8.
DECODER_NUM_HEADS = 8
_PATCH_EMBED = "image_encoder.patch_embed.proj.weight"


def engine_version(checkpoint: Path) -> str:
    """The checkpoint's file name and the segment-anything version, cut to DICOM's 64-character LO."""
    try:
        library = importlib.metadata.version("segment-anything")
    except importlib.metadata.PackageNotFoundError:
        library = "unknown"
    return f"{checkpoint.name}; segment-anything {library}"[:64]


def readiness(checkpoint: Path | None) -> tuple[bool, str]:
    """Whether MedSAM ViT-B can run with ``checkpoint``, and why not; cheap (checks files and packages)."""
    if checkpoint is None:
        return False, f"not configured: set {CONFIG_KEY} to a MedSAM ViT-B checkpoint (segment-anything .pth)"
    for module, package in (("torch", "torch"), ("segment_anything", "segment-anything")):
        if importlib.util.find_spec(module) is None:
            return False, f"package '{package}' is not installed (make setup installs it)"
    if not Path(checkpoint).is_file():
        return False, f"{CONFIG_KEY} '{checkpoint}' is not a readable file"
    return True, f"weights {checkpoint}"


@dataclass(frozen=True)
class SamArchitecture:
    """The sizes of a ``Sam`` network, as read from its state dict."""

    image_size: int
    patch_size: int
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int
    mlp_ratio: float
    prompt_embed_dim: int
    mask_in_chans: int
    decoder_depth: int
    decoder_mlp_dim: int
    attention_downsample_rate: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int


def _count(state: Mapping[str, Any], prefix: str) -> int:
    """How many numbered submodules ``<prefix><n>.`` the state dict holds."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for key in state if (m := pattern.match(key))})


def architecture_from_state_dict(state: Mapping[str, Any]) -> SamArchitecture:
    """Read a ``Sam`` network's sizes from the shapes of its weights.

    Heads of the image encoder come from the relative-position tables (one row width per head dimension);
    blocks with global attention are those whose table spans the whole token grid, the others span the
    attention window.
    """
    missing = [
        key
        for key in (_PATCH_EMBED, "image_encoder.pos_embed", "image_encoder.blocks.0.attn.rel_pos_h")
        if key not in state
    ]
    if missing:
        raise ValueError(f"not a SAM ViT checkpoint: it has no {missing[0]!r}")
    embed_dim, _, patch_size, _ = state[_PATCH_EMBED].shape
    grid = state["image_encoder.pos_embed"].shape[1]
    depth = _count(state, "image_encoder.blocks.")
    spans = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
    head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_indexes = tuple(i for i, span in enumerate(spans) if span == 2 * grid - 1)
    windows = [(span + 1) // 2 for span in spans if span != 2 * grid - 1]
    prompt_embed_dim = state["mask_decoder.iou_token.weight"].shape[1]
    cross_attention = "mask_decoder.transformer.final_attn_token_to_image.q_proj.weight"
    return SamArchitecture(
        image_size=int(grid * patch_size),
        patch_size=int(patch_size),
        encoder_embed_dim=int(embed_dim),
        encoder_depth=depth,
        encoder_num_heads=int(embed_dim // head_dim),
        encoder_global_attn_indexes=global_indexes,
        window_size=windows[0] if windows else 0,
        mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        prompt_embed_dim=int(prompt_embed_dim),
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=_count(state, "mask_decoder.transformer.layers."),
        decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        attention_downsample_rate=int(prompt_embed_dim // state[cross_attention].shape[0]),
        num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0] - 1),
        iou_head_depth=_count(state, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
    )


def build_sam(architecture: SamArchitecture) -> Any:
    """An untrained ``segment_anything.modeling.Sam`` of the given sizes, laid out as ``build_sam_vit_b``."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = architecture
    grid = a.image_size // a.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=a.encoder_depth,
            embed_dim=a.encoder_embed_dim,
            img_size=a.image_size,
            mlp_ratio=a.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a.encoder_num_heads,
            patch_size=a.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=a.encoder_global_attn_indexes,
            window_size=a.window_size,
            out_chans=a.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(a.image_size, a.image_size),
            mask_in_chans=a.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=a.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=a.decoder_depth,
                embedding_dim=a.prompt_embed_dim,
                mlp_dim=a.decoder_mlp_dim,
                num_heads=DECODER_NUM_HEADS,
                attention_downsample_rate=a.attention_downsample_rate,
            ),
            transformer_dim=a.prompt_embed_dim,
            iou_head_depth=a.iou_head_depth,
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
    )


def read_state_dict(checkpoint: Path) -> dict[str, Any]:
    """The ``Sam`` state dict in ``checkpoint``: a bare state dict or a training checkpoint's ``"model"``."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{CONFIG_KEY} '{checkpoint}' cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{CONFIG_KEY} '{checkpoint}' holds a {type(state).__name__}, not a state_dict")
    return state


def load_network(checkpoint: Path, device: str) -> Any:
    """Build the network the checkpoint describes, load its weights and put it on ``device``, in eval mode.

    Not cached here: the tool caches it per process through ``tools.base.cached_model``. Raises
    ``ValueError`` naming ``models.medsam_checkpoint`` when the file is not a usable SAM checkpoint.
    """
    state = read_state_dict(checkpoint)
    try:
        architecture = architecture_from_state_dict(state)
        network = build_sam(architecture)
        network.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{CONFIG_KEY} '{checkpoint}' is not a segment-anything ViT checkpoint: {str(exc)[:300]}"
        ) from exc
    network.to(device).eval()
    logger.info(
        "loaded %s from %s (ViT %d-dim, %d blocks, %d px input) on %s",
        ENGINE_NAME,
        checkpoint.name,
        architecture.encoder_embed_dim,
        architecture.encoder_depth,
        architecture.image_size,
        device,
    )
    return network


def segment_frames(
    network: Any,
    image: np.ndarray,
    prompts: Mapping[int, Sequence[FramePrompt]],
    window: tuple[float, float] | None,
    is_color: bool = False,
) -> dict[int, list[np.ndarray]]:
    """Segment ``image[frame]`` for each prompt of that frame; one boolean ``[row, column]`` mask per prompt."""
    import torch
    import torch.nn.functional as F

    device = network.device
    size = network.image_encoder.img_size
    rows, columns = image.shape[1:3]
    scale = (size / columns, size / rows)
    results: dict[int, list[np.ndarray]] = {}
    for frame in sorted(prompts):
        tensor = frame_tensor(image[frame], window, is_color).to(device)
        tensor = F.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        with torch.inference_mode():
            embedding = network.image_encoder(tensor.clamp(0.0, 1.0))
            masks = []
            for prompt in prompts[frame]:
                probability = torch.sigmoid(prompt_logits(network, embedding, prompt, scale))
                probability = F.interpolate(
                    probability, size=(rows, columns), mode="bilinear", align_corners=False
                )
                masks.append((probability[0, 0] > 0.5).cpu().numpy())
        results[frame] = masks
    return results
