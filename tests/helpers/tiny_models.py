"""Tiny randomly initialised language models saved in the real on-disk format, for the engine tests."""

from __future__ import annotations

from pathlib import Path

SENTENCES = (
    "the left lung volume is normal and the right lung is clear",
    "there is a nodule in the lung and a small effusion",
    "findings impression report user assistant system image question answer",
    "what is shown in this image a chest ct of the lungs",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }} : {{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant :{% endif %}"
)


def tiny_tokenizer(special_tokens: tuple[str, ...] = ()):
    """A word-level tokenizer trained on ``SENTENCES``, with a chat template; ``special_tokens`` are kept
    whole (LLaVA's ``<image>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(
        SENTENCES,
        trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>", *special_tokens]),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(special_tokens),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny_llama(folder: Path) -> Path:
    """A randomly initialised 2-layer LlamaForCausalLM and its tokenizer, saved as a user's folder is."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    LlamaForCausalLM(tiny_llama_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
