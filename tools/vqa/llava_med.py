"""LLaVA-Med through transformers: a folder written by ``save_pretrained`` (``LlavaForConditionalGeneration``
and its ``AutoProcessor``), named by ``models.llava_med`` and loaded with ``local_files_only``.

The model sees one image: the middle frame of the series, windowed to 8-bit grey and repeated to RGB (a
colour image is taken as it is). The prompt is the processor's chat template with the image and the
question, or LLaVA's ``USER: <image>\\n... ASSISTANT:`` when the processor has none. Decoding is greedy.
LLaVA-Med as Microsoft publishes it (``model_type`` ``llava_mistral``) is in the LLaVA repository's own
format; it must be converted to transformers' ``llava`` format first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tools.base import EngineKind, EngineStatus, cached_model, resolve_device
from tools.llm import (
    TOKENIZER_FILES,
    WEIGHT_FILES,
    folder_problems,
    folder_version,
    greedy_reply,
    missing_packages,
)

if TYPE_CHECKING:
    from config.settings import ModelsSection

logger = logging.getLogger(__name__)

ENGINE_NAME = "LLaVA-Med"
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def engine_status(models: ModelsSection) -> EngineStatus:
    """Whether ``models.llava_med`` names a folder transformers can load as Llava; reads only config.json."""
    if models.llava_med is None:
        return EngineStatus(
            ENGINE_NAME,
            EngineKind.CONFIGURED,
            False,
            "models.llava_med is not set (a LLaVA-Med folder in transformers' format)",
        )
    folder = Path(models.llava_med)
    problems = [f"package '{p}' is not installed" for p in missing_packages("torch", "transformers")]
    problems += folder_problems(
        folder, weights=WEIGHT_FILES, processor=_PROCESSOR_FILES, tokenizer=TOKENIZER_FILES
    )
    model_type = _model_type(folder)
    if model_type and model_type != "llava":
        problems.append(
            f"{folder} holds a '{model_type}' model, not transformers' 'llava' format; convert it "
            "(transformers' convert_llava_weights_to_hf.py) and point models.llava_med at the result"
        )
    if problems:
        return EngineStatus(ENGINE_NAME, EngineKind.CONFIGURED, False, "; ".join(problems))
    return EngineStatus(ENGINE_NAME, EngineKind.CONFIGURED, True, f"weights {folder}")


def engine_version(models: ModelsSection) -> str:
    return folder_version(Path(models.llava_med)) if models.llava_med is not None else ""


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return ""


def load(models: ModelsSection, device: str) -> tuple[Any, Any]:
    """``(model, processor)``, once per process and device; ``RuntimeError`` says what to fix."""
    status = engine_status(models)
    if not status.ready:
        raise RuntimeError(f"the {ENGINE_NAME} engine cannot run here: {status.reason}")
    folder = Path(models.llava_med)  # type: ignore[arg-type]  # engine_status checked it is set
    device = resolve_device(device)
    return cached_model(("llava", str(folder.resolve()), device), lambda: _load(folder, device))


def _load(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype="auto")
    model.to(device).eval()
    logger.info("loaded %s from %s on %s", ENGINE_NAME, folder, device)
    return model, processor


def middle_frame_rgb(image: np.ndarray, is_color: bool, window: tuple[float, float] | None) -> np.ndarray:
    """The middle frame as ``[row, column, 3]`` uint8: grey through ``window`` (level, width), or its
    0.5-99.5 percentiles when the source gives no window; colour unchanged."""
    frame = image[image.shape[0] // 2]
    if is_color:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    frame = frame.astype(np.float32)
    if window is not None:
        level, width = window
        low, high = level - width / 2, level + width / 2
    else:
        low, high = (float(v) for v in np.percentile(frame, [0.5, 99.5]))
    grey = np.clip((frame - low) / max(high - low, 1e-6), 0.0, 1.0)
    grey8 = np.round(grey * 255).astype(np.uint8)
    return np.repeat(grey8[:, :, None], 3, axis=2)


def prompt_text(processor: Any, question: str) -> str:
    """The text the model is given: its chat template with one image and the question, else LLaVA's own."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return str(processor.apply_chat_template(conversation, add_generation_prompt=True))
    image_token = getattr(processor, "image_token", "<image>")
    return f"USER: {image_token}\n{question} ASSISTANT:"


def answer(model: Any, processor: Any, image_rgb: np.ndarray, question: str, max_new_tokens: int) -> str:
    """The model's answer to ``question`` about ``image_rgb`` (``[row, column, 3]`` uint8), greedy."""

    encoded = processor(images=image_rgb, text=prompt_text(processor, question), return_tensors="pt")
    inputs = {
        key: value.to(model.device, dtype=model.dtype) if key == "pixel_values" else value.to(model.device)
        for key, value in encoded.items()
        if key != "token_type_ids"  # some tokenizers add them; Llava's forward takes none
    }
    return greedy_reply(model, processor.tokenizer, inputs, max_new_tokens)
