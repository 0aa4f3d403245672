"""The Grounding DINO engine (MMedAgent's grounding model) through ``transformers``, from a local folder.

The folder is what ``save_pretrained`` writes for a ``GroundingDinoForObjectDetection`` and its processor
(``config.json``, the weights, ``preprocessor_config.json`` and the tokenizer files), named by
``models.grounding_dino``. Nothing is downloaded: loading uses ``local_files_only``.

As MMedAgent did, the prompts are joined into one caption (``"left lung . right lung ."``); each frame is
run once, grey frames windowed to 0-255 and repeated to RGB. A box is kept when its best token scores
above ``box_threshold``; its phrase is made of the caption's tokens scoring above ``text_threshold``
(``post_process_grounded_object_detection``). The phrase becomes the box's label: the prompt it names, or
the phrase itself when it names none or several prompts equally.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.base import Box, cached_model, resolve_device

logger = logging.getLogger(__name__)

ENGINE_NAME = "Grounding DINO"
BOX_THRESHOLD = 0.3
TEXT_THRESHOLD = 0.25
REQUIRED_FILES = ("config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class Detector:
    """A loaded Grounding DINO: processor (image processor and tokenizer), model, and where it runs."""

    processor: Any
    model: Any
    device: str
    version: str


def readiness(folder: Path | None) -> tuple[bool, str]:
    """Whether a Grounding DINO folder is configured and looks loadable; cheap (reads no weights)."""
    if folder is None:
        return (
            False,
            "no weights configured (set models.grounding_dino to a folder written by save_pretrained)",
        )
    if importlib.util.find_spec("transformers") is None:
        return False, "package 'transformers' is not installed (make setup installs it)"
    if not folder.is_dir():
        return False, f"models.grounding_dino '{folder}' is not a folder"
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        return False, (
            f"models.grounding_dino '{folder}' lacks {', '.join(missing)}: save both the model and its "
            "processor there with save_pretrained"
        )
    return True, f"weights {folder}"


def engine_version(folder: Path) -> str:
    """The weights folder's name and the transformers release that runs it, for Algorithm Version."""
    try:
        transformers_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers_version = "unknown"
    return f"{folder.name} (transformers {transformers_version})"


def load(folder: Path, device: str) -> Detector:
    """The processor and model of ``folder`` on ``device``, loaded once per process (``cached_model``)."""
    device = resolve_device(device)
    key = (ENGINE_NAME, str(folder.resolve()), device)
    return cached_model(key, lambda: _load_uncached(folder, device))


def _load_uncached(folder: Path, device: str) -> Detector:
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = GroundingDinoForObjectDetection.from_pretrained(folder, local_files_only=True)
    model.to(device).eval()
    version = engine_version(folder)
    logger.info("loaded %s %s on %s", ENGINE_NAME, version, device)
    return Detector(processor=processor, model=model, device=device, version=version)


def caption(prompts: list[str]) -> str:
    """MMedAgent's caption: prompts separated and ended by " . " (``"left lung . right lung ."``)."""
    return " ".join(f"{prompt.strip().rstrip('.').strip()} ." for prompt in prompts)


def to_rgb(frame: np.ndarray, window: tuple[float, float], is_color: bool) -> np.ndarray:
    """One frame as ``uint8 [row, column, 3]``: colour as it is, grey through ``window`` (level, width)."""
    if is_color:
        return frame.astype(np.uint8)
    level, width = window
    low = level - width / 2.0
    scaled = np.clip((frame.astype(np.float32) - low) / max(width, 1e-6), 0.0, 1.0)
    grey = np.round(scaled * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def default_window(image: np.ndarray) -> tuple[float, float]:
    """(level, width) spanning the 0.5th to 99.5th percentile of the whole image: one window for all frames."""
    low, high = (float(v) for v in np.percentile(image, [0.5, 99.5]))
    return (low + high) / 2.0, max(high - low, 1e-6)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def label_for_phrase(phrase: str, prompts: list[str]) -> str:
    """The prompt a detected phrase names: the one sharing most of its words (Jaccard), unique and > 0.

    A phrase that names several prompts equally ("left lung . right lung") or none keeps its own text;
    an empty phrase (no token above the text threshold) gives "".
    """
    words = _words(phrase)
    if not words:
        return ""
    overlaps = {prompt: len(words & _words(prompt)) / len(words | _words(prompt)) for prompt in prompts}
    best = max(overlaps.values(), default=0.0)
    winners = [prompt for prompt, overlap in overlaps.items() if overlap == best]
    if best > 0 and len(winners) == 1:
        return winners[0]
    return " ".join(phrase.split())


def _clean_phrase(phrase: str, special_tokens: list[str]) -> str:
    for token in special_tokens:
        phrase = phrase.replace(token, " ")
    return " ".join(phrase.split()).strip(" .")


def _post_process(
    detector: Detector,
    outputs: Any,
    input_ids: Any,
    box_threshold: float,
    text_threshold: float,
    size: tuple[int, int],
) -> dict[str, Any]:
    """``post_process_grounded_object_detection`` under both of its signatures (``box_threshold`` < 4.51)."""
    method = detector.processor.post_process_grounded_object_detection
    threshold_name = "threshold" if "threshold" in inspect.signature(method).parameters else "box_threshold"
    result: dict[str, Any] = method(
        outputs,
        input_ids=input_ids,
        text_threshold=text_threshold,
        target_sizes=[size],
        **{threshold_name: box_threshold},
    )[0]
    return result


def detect_frame(
    detector: Detector,
    rgb: np.ndarray,
    frame: int,
    prompts: list[str],
    box_threshold: float = BOX_THRESHOLD,
    text_threshold: float = TEXT_THRESHOLD,
) -> list[Box]:
    """Labelled boxes on one RGB frame, in pixels, clipped to the frame; boxes with an empty phrase dropped."""
    import torch

    rows, columns = rgb.shape[:2]
    inputs = detector.processor(images=rgb, text=caption(prompts), return_tensors="pt").to(detector.device)
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    result = _post_process(
        detector, outputs, inputs["input_ids"], box_threshold, text_threshold, (rows, columns)
    )
    phrases = result["text_labels"] if "text_labels" in result else result["labels"]  # "labels" < 4.51
    special = list(detector.processor.tokenizer.all_special_tokens)
    boxes = []
    for xyxy, score, phrase in zip(result["boxes"].tolist(), result["scores"].tolist(), phrases, strict=True):
        label = label_for_phrase(_clean_phrase(str(phrase), special), prompts)
        x0, x1 = (min(max(v, 0.0), columns - 1.0) for v in (xyxy[0], xyxy[2]))
        y0, y1 = (min(max(v, 0.0), rows - 1.0) for v in (xyxy[1], xyxy[3]))
        if not label or x1 <= x0 or y1 <= y0:
            continue
        boxes.append(Box(label, frame, (x0, y0, x1, y1), float(score), rows, columns))
    return boxes


def detect(
    detector: Detector,
    image: np.ndarray,
    prompts: list[str],
    window: tuple[float, float] | None,
    is_color: bool,
    box_threshold: float = BOX_THRESHOLD,
    text_threshold: float = TEXT_THRESHOLD,
) -> list[Box]:
    """Boxes on every frame of ``image`` (``[frame, row, column]`` or ``[..., 3]`` RGB), frame by frame.

    Grey frames go through ``window`` (level, width), else one window over the whole image's range.
    """
    shown = window if window is not None or is_color else default_window(image)
    boxes: list[Box] = []
    for index in range(image.shape[0]):
        rgb = to_rgb(image[index], shown or (0.0, 1.0), is_color)
        boxes.extend(detect_frame(detector, rgb, index, prompts, box_threshold, text_threshold))
    return boxes
