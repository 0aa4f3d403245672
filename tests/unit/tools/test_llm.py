"""The shared language model loader: the packaged SmolLM2 really generates; a configured folder loads.

The tiny models below (a word-level tokenizer, a 2-layer LLaMA) are built here with random weights and
saved with ``save_pretrained``, the format a user's folder has; the report and VQA tests use them too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ModelsSection
from tests.helpers.tiny_models import save_tiny_llama, tiny_tokenizer
from tools.base import EngineKind
from tools.llm import SMOLLM2_ENGINE, generate, llm_engine, llm_engine_version, load_causal_lm, smollm2_file


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_smollm2_is_the_pretrained_engine_and_really_generates() -> None:
    models = ModelsSection(device="cpu")
    engine = llm_engine(models)
    assert engine.name == SMOLLM2_ENGINE and engine.kind is EngineKind.PRETRAINED
    assert engine.ready, engine.reason
    assert smollm2_file() is not None and "Q4_1" in llm_engine_version(models)
    model, tokenizer, name = load_causal_lm(models, "cpu")
    assert name == SMOLLM2_ENGINE
    messages = [{"role": "user", "content": "Name one organ in the chest."}]
    first = generate(model, tokenizer, messages, max_new_tokens=12)
    assert first.strip()
    assert generate(model, tokenizer, messages, max_new_tokens=12) == first  # greedy: reproducible
    assert load_causal_lm(models, "cpu")[0] is model  # cached per process


def test_a_configured_folder_wins_and_generates(tiny_llama: Path) -> None:
    models = ModelsSection(device="cpu", llm=tiny_llama)
    engine = llm_engine(models)
    assert (engine.name, engine.kind, engine.ready) == (f"LLM {tiny_llama.name}", EngineKind.CONFIGURED, True)
    model, tokenizer, name = load_causal_lm(models, "auto")
    assert name == engine.name
    assert model.config.num_hidden_layers == 2
    reply = generate(model, tokenizer, [{"role": "user", "content": "what is shown"}], max_new_tokens=5)
    assert isinstance(reply, str)
    assert len(tokenizer(reply)["input_ids"]) <= 5


def test_a_folder_without_weights_is_not_ready_and_says_what_is_missing(tmp_path: Path) -> None:
    tiny_tokenizer().save_pretrained(tmp_path)
    models = ModelsSection(device="cpu", llm=tmp_path)
    engine = llm_engine(models)
    assert not engine.ready
    assert "no config.json" in engine.reason and "no weights" in engine.reason
    with pytest.raises(RuntimeError, match="cannot run here: no config.json"):
        load_causal_lm(models, "cpu")


def test_generate_rejects_a_zero_token_budget(tiny_llama: Path) -> None:
    model, tokenizer, _ = load_causal_lm(ModelsSection(device="cpu", llm=tiny_llama), "cpu")
    with pytest.raises(ValueError, match="'max_new_tokens' value 0"):
        generate(model, tokenizer, [{"role": "user", "content": "hi"}], max_new_tokens=0)
