"""BiomedCLIP zero-shot classification through open_clip, from a local folder; nothing is downloaded.

The folder is laid out as BiomedCLIP is published on the Hugging Face hub
(microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224): ``open_clip_config.json`` (``model_cfg`` and
``preprocess_cfg``), ``open_clip_pytorch_model.bin`` and the tokenizer files (``vocab.txt``,
``tokenizer.json``, ``tokenizer_config.json``). Its text tower is a Hugging Face BERT that the config
names by hub id (``hf_model_name``); open_clip would fetch that model's ``config.json`` from the hub, so
it is looked for locally instead, in this order:

1. ``<folder>/<hf_model_name>/config.json`` (e.g. ``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``),
   or ``hf_model_name`` itself when it is a path (absolute, or relative to the folder);
2. ``<folder>/<last part of hf_model_name>/config.json``;
3. the local Hugging Face cache, when that model was downloaded once before.

The text tower's weights are in ``open_clip_pytorch_model.bin``; only its architecture comes from that
``config.json``. The tokenizer comes from the same places (by ``hf_tokenizer_name``), else the folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.base import EngineKind, EngineStatus

logger = logging.getLogger(__name__)

ENGINE_NAME = "BiomedCLIP"
CONFIG_FILE = "open_clip_config.json"
#: the checkpoint names open_clip looks for in a folder, in its order of preference
WEIGHTS_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
#: BiomedCLIP's zero-shot prompt (its model card); MMedAgent's own script used "the photo can be classified as "
TEMPLATE = "this is a photo of "
PACKAGES = ("torch", "torchvision", "open_clip", "timm", "transformers")


@dataclass(frozen=True)
class BiomedClipFolder:
    """A BiomedCLIP folder, checked: its model config, weights, and local text tower and tokenizer."""

    folder: Path
    model_cfg: dict[str, Any]
    weights: Path
    text_model: Path
    tokenizer: Path

    @classmethod
    def read(cls, folder: Path) -> BiomedClipFolder:
        """Check ``folder`` file by file; ``FileNotFoundError`` or ``ValueError`` say what is missing."""
        folder = Path(folder).expanduser().resolve()
        model_cfg = _read_model_cfg(folder)
        text_cfg = model_cfg["text_cfg"]
        model_name = text_cfg["hf_model_name"]
        text_model = _local_hf_folder(folder, model_name, ("config.json",))
        if text_model is None:
            raise FileNotFoundError(
                f"BiomedCLIP's text tower '{model_name}' has no local config.json: copy the config.json of "
                f"that model into {folder / Path(model_name).name} (nothing is downloaded at run time)"
            )
        tokenizer_name = text_cfg.get("hf_tokenizer_name") or model_name
        tokenizer = _local_hf_folder(folder, tokenizer_name, TOKENIZER_FILES)
        if tokenizer is None and any((folder / name).is_file() for name in TOKENIZER_FILES):
            tokenizer = folder
        if tokenizer is None:
            raise FileNotFoundError(
                f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) for '{tokenizer_name}' in {folder}: "
                "copy them from the BiomedCLIP model repository"
            )
        return cls(folder, model_cfg, _weights(folder), text_model, tokenizer)


def _read_model_cfg(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: models.biomedclip must be an open_clip model folder")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from exc
    model_cfg = document.get("model_cfg") if isinstance(document, dict) else None
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        raise ValueError(f"Invalid {path} - it needs 'model_cfg' with 'vision_cfg' and 'text_cfg'")
    if not model_cfg["text_cfg"].get("hf_model_name"):
        raise ValueError(
            f"Invalid {path} - 'text_cfg' names no 'hf_model_name'; this engine loads BiomedCLIP-style models "
            "with a Hugging Face text tower"
        )
    return model_cfg


def _weights(folder: Path) -> Path:
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no open_clip weights in {folder} (looked for {', '.join(WEIGHTS_FILES)})")


def _local_hf_folder(folder: Path, name: str, wanted: Sequence[str]) -> Path | None:
    """Where the Hugging Face model ``name`` has one of the ``wanted`` files on this machine, or None."""
    candidates = [folder / name, folder / Path(name).name]
    for candidate in candidates:
        if any((candidate / file).is_file() for file in wanted):
            return candidate.resolve()
    return _hf_cache_folder(name, wanted)


def _hf_cache_folder(name: str, wanted: Sequence[str]) -> Path | None:
    """The snapshot folder of ``name`` in the local Hugging Face cache; a file lookup, never a request."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for file in wanted:
        try:
            cached = try_to_load_from_cache(name, file)
        except ValueError:  # not a hub id (a path, or a name with odd characters)
            return None
        if isinstance(cached, str):
            return Path(cached).parent
    return None


def engine_status(folder: Path | None) -> EngineStatus:
    """Whether BiomedCLIP can run from ``folder`` (``models.biomedclip``); checks files, loads nothing."""

    def status(ready: bool, reason: str) -> EngineStatus:
        return EngineStatus(ENGINE_NAME, EngineKind.CONFIGURED, ready, reason)

    if folder is None:
        return status(False, "models.biomedclip is not set (point it at a BiomedCLIP open_clip folder)")
    for package in PACKAGES:
        if importlib.util.find_spec(package) is None:
            return status(False, f"package '{package}' is not installed (make setup installs it)")
    try:
        located = BiomedClipFolder.read(folder)
    except (OSError, ValueError) as exc:
        return status(False, str(exc))
    return status(True, f"weights {located.weights}")


def engine_version(folder: Path) -> str:
    """The model folder's name and the open_clip release that ran it, written into every output."""
    try:
        open_clip_version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        open_clip_version = "unknown"
    return f"{Path(folder).name} (open_clip {open_clip_version})"


@dataclass
class ZeroShotClassifier:
    """A loaded BiomedCLIP: image preprocessing, tokenizer and model on one device."""

    model: Any
    preprocess: Callable[[Any], Any]
    tokenizer: Callable[[list[str]], Any]
    device: str
    version: str

    def classify(self, frame: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
        """Probabilities of ``labels`` for one RGB uint8 frame ``[row, column, 3]``; they sum to 1.

        Each label is scored as ``TEMPLATE + label``; the softmax uses the model's learned logit scale.
        """
        import torch
        from PIL import Image

        image = self.preprocess(Image.fromarray(frame)).unsqueeze(0).to(self.device)
        texts = self.tokenizer([TEMPLATE + label for label in labels]).to(self.device)
        with torch.inference_mode():
            image_features = self.model.encode_image(image, normalize=True)
            text_features = self.model.encode_text(texts, normalize=True)
            logits = self.model.logit_scale.exp() * image_features @ text_features.T
            probabilities = logits.softmax(dim=-1)[0].float().cpu().numpy()
        return {label: float(p) for label, p in zip(labels, probabilities, strict=True)}


def load_classifier(folder: Path, device: str) -> ZeroShotClassifier:
    """Build BiomedCLIP from ``folder`` with open_clip and load its weights, with no network access.

    The folder's config is used as written, except that the text tower and tokenizer names point at the
    local folders ``BiomedClipFolder.read`` found, and the text tower is built from its config alone
    (its weights are in the open_clip checkpoint).
    """
    import open_clip
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    located = BiomedClipFolder.read(folder)
    text_cfg = dict(located.model_cfg["text_cfg"])
    text_cfg.update(
        hf_model_name=str(located.text_model),
        hf_tokenizer_name=str(located.tokenizer),
        hf_model_pretrained=False,
    )
    model, preprocess = open_clip.create_model_from_pretrained(
        f"local-dir:{located.folder}", device=device, text_cfg=text_cfg
    )
    model.eval()
    tokenizer = HFTokenizer(
        str(located.tokenizer),
        context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        local_files_only=True,
        **(text_cfg.get("tokenizer_kwargs") or {}),
    )
    version = engine_version(located.folder)
    logger.info("loaded %s %s on %s", ENGINE_NAME, version, device)
    return ZeroShotClassifier(model, preprocess, tokenizer, device, version)


def display_frame(
    image: np.ndarray, is_color: bool, window: tuple[float, float] | None
) -> tuple[np.ndarray, int]:
    """The middle frame as RGB uint8 ``[row, column, 3]``, and its index: what BiomedCLIP is shown.

    Grey frames go through ``window`` (level, width), the source's display window, else their own
    minimum to maximum; colour frames are used as they are.
    """
    expected = 4 if is_color else 3
    if image.ndim != expected or (is_color and image.shape[-1] != 3):
        layout = "[frame, row, column, 3]" if is_color else "[frame, row, column]"
        raise ValueError(f"Invalid 'image' shape {image.shape} - expected {layout}")
    index = image.shape[0] // 2
    frame = image[index]
    if is_color:
        return np.clip(frame, 0, 255).astype(np.uint8), index
    frame = frame.astype(np.float32)
    if window is not None:
        level, width = window
        low, high = level - width / 2.0, level + width / 2.0
    else:
        low, high = float(frame.min()), float(frame.max())
    scaled = (frame - low) / (high - low) if high > low else np.zeros_like(frame)
    grey = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), index
