"""What the SAM-family engines (LiteMedSAM, MedSAM ViT-B) share: prompts, pixel scaling, the mask decoder call.

Both networks have SAM's ``prompt_encoder`` and ``mask_decoder``; they differ in the image encoder and in
how a frame is fitted to the encoder's input (see ``litemedsam`` and ``medsam_vit``). Coordinates here are
pixels of the source frame, ``x`` along columns and ``y`` along rows; an engine passes the factors that take
them to its input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FramePrompt:
    """One prompt on one frame: a box ``(x0, y0, x1, y1)``, or points with one flag each (True = inside).

    SAM reads several points as one prompt: positive points mark the structure, negative ones what is not
    part of it. A prompt of negative points only says nothing about what to segment, so it is refused.
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    positive: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if (self.box is None) == (not self.points):
            raise ValueError("Invalid FramePrompt - give either 'box' or 'points', not both or neither")
        if len(self.points) != len(self.positive):
            raise ValueError(
                f"Invalid FramePrompt 'positive' value {self.positive!r} - needs one flag per point "
                f"({len(self.points)})"
            )
        if self.points and not any(self.positive):
            raise ValueError("Invalid FramePrompt 'positive' value - at least one point must be positive")


def to_unit_range(frame: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Scale a grey frame to 0-1: through ``window`` (level, width) when given, else its 0.5-99.5 percentiles."""
    frame = frame.astype(np.float32)
    if window is not None:
        level, width = window
        low, high = level - width / 2, level + width / 2
    else:
        low, high = np.percentile(frame, [0.5, 99.5])
    scaled = np.clip((frame - float(low)) / max(float(high - low), 1e-6), 0.0, 1.0)
    return scaled.astype(np.float32, copy=False)


def frame_tensor(frame: np.ndarray, window: tuple[float, float] | None, is_color: bool) -> Any:
    """A frame as the ``(1, 3, rows, columns)`` float tensor in 0-1 that the SAM encoders read.

    Grey frames go through ``to_unit_range`` and are repeated on three channels; colour frames
    (``[row, column, 3]``) are min-max scaled, as MedSAM scales its RGB inputs.
    """
    import torch

    if is_color:
        rgb = frame.astype(np.float32)
        rgb = ((rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-6)).astype(np.float32, copy=False)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    grey = torch.from_numpy(to_unit_range(frame, window))
    return grey[None, None].repeat(1, 3, 1, 1)


def prompt_logits(network: Any, embedding: Any, prompt: FramePrompt, scale: tuple[float, float]) -> Any:
    """Low-resolution mask logits ``(1, 1, h, w)`` of one prompt on one encoded frame.

    ``scale`` is ``(x factor, y factor)`` from source pixels to the encoder's input pixels. One mask per
    prompt (``multimask_output=False``), as MedSAM and LiteMedSAM were trained.
    """
    import torch

    scale_x, scale_y = scale
    device = embedding.device
    boxes = points = None
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        boxes = torch.tensor(
            [[[x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y]]], dtype=torch.float32, device=device
        )
    else:
        coordinates = torch.tensor(
            [[(x * scale_x, y * scale_y) for x, y in prompt.points]], dtype=torch.float32, device=device
        )
        labels = torch.tensor([[1 if p else 0 for p in prompt.positive]], dtype=torch.int64, device=device)
        points = (coordinates, labels)
    sparse, dense = network.prompt_encoder(points=points, boxes=boxes, masks=None)
    logits, _ = network.mask_decoder(
        image_embeddings=embedding,
        image_pe=network.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return logits
