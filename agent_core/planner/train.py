"""LoRA fine-tuning of the planner's backbone on planning conversations (``medagent planner train``).

Defaults follow MMedAgent: LoRA rank 128, alpha 256, learning rate 2e-4, cosine schedule with 3 % warm-up,
on every linear projection of attention and MLP (``all-linear``: q, k, v, o, gate, up, down for LLaMA-type
models). All are flags; ``TrainConfig`` holds them. The loss is the next-token loss on the assistant's
reply only (the plan after ``"thoughts🤔"``); prompts are left-padded so that only the reply's logits are
computed (``logits_to_keep``), which saves the vocabulary projection on the prompt.

``out`` receives, when training ends: ``adapter_model.safetensors`` (float16) and ``adapter_config.json``
(a ``peft`` adapter whose ``base_model_name_or_path`` is the backbone's engine name) and
``training_log.json`` (configuration, data summary, steps, wall time, loss curve). While training, every
``save_every`` steps, ``out/checkpoint/`` holds the adapter, optimizer and scheduler state and the step; a
run started again with the same ``out`` resumes there (the same configuration is required) and a finished
``out`` is left as it is. The batch order is a function of the seed and the step, so a resumed run sees
the batches an uninterrupted one would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent_core.planner.llm import encode_prompt, encode_reply

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
STATE_FILE = "state.pt"
LOG_FILE = "training_log.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
#: sequence lengths of a batch are rounded up to this multiple
PAD_MULTIPLE = 16
#: configuration keys a resumed run must share with the checkpoint
RESUME_KEYS = (
    "rank",
    "alpha",
    "dropout",
    "learning_rate",
    "steps",
    "batch_size",
    "max_length",
    "seed",
    "warmup_ratio",
    "target_modules",
    "init_adapter",
)


@dataclass
class TrainConfig:
    """What ``train`` does; the defaults are MMedAgent's LoRA settings."""

    out: Path
    rank: int = 128
    alpha: int = 256
    dropout: float = 0.05
    learning_rate: float = 2e-4
    epochs: float = 1.0
    steps: int | None = None  # wins over epochs
    batch_size: int = 8
    max_length: int = 384
    seed: int = 0
    warmup_ratio: float = 0.03
    save_every: int = 50
    target_modules: str = "all-linear"
    precision: str = "auto"  # auto: bfloat16 autocast where the CPU or GPU supports it, else float32
    init_adapter: str | None = None  # continue training this adapter (add-tool) instead of a fresh one
    device: str = "auto"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("rank", "alpha", "batch_size", "max_length", "save_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Invalid '{name}' value {getattr(self, name)!r} - must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"Invalid 'steps' value {self.steps!r} - must be at least 1")
        if self.epochs <= 0:
            raise ValueError(f"Invalid 'epochs' value {self.epochs!r} - must be positive")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"Invalid 'learning_rate' value {self.learning_rate!r} - must be in (0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"Invalid 'warmup_ratio' value {self.warmup_ratio!r} - must be in [0, 1)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"Invalid 'precision' value {self.precision!r} - must be auto, fp32 or bf16")


@dataclass
class TrainResult:
    """What a run did, as written to ``training_log.json``."""

    out: Path
    steps: int
    examples: int
    skipped: int
    seconds: float
    final_loss: float
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)
    finished: bool = True  # False: stopped early (``stop_after``) with a checkpoint to resume from


# ------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Encoded:
    """A conversation as token ids: the prompt, then the reply the loss is on."""

    prompt: list[int]
    reply: list[int]


def encode_records(
    tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int
) -> tuple[list[Encoded], int]:
    """The records' first human/gpt turns as ids; those longer than ``max_length`` are left out (counted)."""
    encoded, skipped = [], 0
    for record in records:
        turns = record.get("conversations") or []
        human = next((t["value"] for t in turns if t.get("from") == "human"), None)
        reply = next((t["value"] for t in turns if t.get("from") == "gpt"), None)
        if human is None or reply is None:
            raise ValueError(f"record {record.get('id')!r} lacks a human or a gpt turn")
        prefix, request = encode_prompt(tokenizer, human)
        item = Encoded(prefix + request, encode_reply(tokenizer, reply))
        if len(item.prompt) + len(item.reply) > max_length:
            skipped += 1
            continue
        encoded.append(item)
    return encoded, skipped


def data_fingerprint(records: Sequence[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.get("conversations"), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def data_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts by tools expected, language and modality, for the model card."""
    tools = Counter("+".join(r.get("expected_tools") or []) or "(none)" for r in records)
    return {
        "records": len(records),
        "by_tools": dict(tools.most_common()),
        "by_language": dict(Counter(r.get("language", "?") for r in records).most_common()),
        "by_modality": dict(Counter(r.get("modality") or "(none)" for r in records).most_common()),
        "families": len({str(r.get("family", "")).split("+")[0] for r in records}),
    }


def batch_order(lengths: Sequence[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The example indices of every step: epochs of seeded shuffles, cut into batches of similar length.

    Within windows of 16 batches the examples are sorted by length before they are cut (less padding),
    and the batches of a window are shuffled again, so that short and long batches alternate.
    """
    batches: list[list[int]] = []
    epoch = 0
    window = batch_size * 16
    while len(batches) < steps:
        rng = random.Random(f"{seed}:epoch{epoch}")
        order = list(range(len(lengths)))
        rng.shuffle(order)
        epoch += 1
        for start in range(0, len(order) - batch_size + 1, window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
            cut = [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
            rng.shuffle(cut)
            batches.extend(cut)
        if not batches:
            raise ValueError(f"fewer examples ({len(lengths)}) than one batch ({batch_size})")
    return batches[:steps]


def _rounded_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def collate(items: Sequence[Encoded], pad_id: int, multiple: int = PAD_MULTIPLE) -> dict[str, Any]:
    """Left-padded ``input_ids``, ``attention_mask``, ``position_ids`` and the reply ``labels`` (the last
    ``reply_length`` positions, -100 elsewhere) of a batch.

    Both lengths are rounded up to a ``multiple``: few distinct shapes keep the CPU kernels' caches (and
    the process's memory) from growing with every new sequence length.
    """
    import torch

    reply_length = _rounded_up(max(len(i.reply) for i in items), multiple)
    length = max(_rounded_up(max(len(i.prompt) + len(i.reply) for i in items), multiple), reply_length + 1)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), reply_length), -100, dtype=torch.long)
    for row, item in enumerate(items):
        ids = item.prompt + item.reply
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
        labels[row, reply_length - len(item.reply) :] = torch.tensor(item.reply)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "labels": labels,
    }


def reply_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean next-token cross-entropy over the reply tokens; logits only for the reply positions."""
    import torch

    reply_length = batch["labels"].shape[1]
    output = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=reply_length + 1,
        use_cache=False,
    )
    logits = output.logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100
    )


# ------------------------------------------------------------------------------------------------ model


def use_bf16(precision: str, device: str) -> bool:
    import torch

    if precision != "auto":
        return precision == "bf16"
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def backbone(models: Any, device: str) -> tuple[Any, Any, str]:
    """A private, trainable copy of the configured backbone, its tokenizer and engine name."""
    from tools.llm import load_causal_lm

    model, tokenizer, engine_name = load_causal_lm(models, device)
    return copy.deepcopy(model), tokenizer, engine_name


def lora_model(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.init_adapter:
        return PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_adapter(model: Any, folder: Path, engine_name: str) -> None:
    """The adapter's weights (float16) and config, without peft's README."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu").half().contiguous()
        for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config = copy.deepcopy(model.peft_config["default"])
    peft_config.base_model_name_or_path = engine_name
    peft_config.inference_mode = True
    peft_config.save_pretrained(str(folder))


def load_adapter_weights(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"the checkpoint in {folder} does not fit this model: {unexpected[:3]}")


# ---------------------------------------------------------------------------------------------- training


def _resume_state(config: TrainConfig, fingerprint: str) -> dict[str, Any] | None:
    import torch

    path = config.out / CHECKPOINT / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("config", {})
    current = {key: _jsonable(getattr(config, key)) for key in RESUME_KEYS}
    different = [
        f"{key} {saved.get(key)!r} there, {current[key]!r} now"
        for key in RESUME_KEYS
        if saved.get(key) != current[key]
    ]
    if state.get("data_fingerprint") != fingerprint:
        different.append("the training data differ")
    if different:
        raise ValueError(
            f"{config.out} holds a checkpoint of another run ({'; '.join(different)}); "
            "use another --out, the same settings, or delete the checkpoint folder"
        )
    return state


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _save_checkpoint(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
    config: TrainConfig,
    engine_name: str,
) -> None:
    import torch

    folder = config.out / CHECKPOINT
    temporary = config.out / f"{CHECKPOINT}.part"
    if temporary.exists():
        shutil.rmtree(temporary)
    save_adapter(model, temporary, engine_name)
    # the float16 file is for the final adapter; the checkpoint keeps full precision
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    save_file(
        {
            k: v.detach().to("cpu").contiguous()
            for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
        },
        str(temporary / ADAPTER_WEIGHTS),
    )
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "config": {key: _jsonable(getattr(config, key)) for key in RESUME_KEYS},
            **extra,
        },
        temporary / STATE_FILE,
    )
    old = config.out / f"{CHECKPOINT}.old"
    if folder.exists():
        folder.replace(old)
    temporary.replace(folder)
    if old.exists():
        shutil.rmtree(old)


def train(
    config: TrainConfig,
    records: Sequence[dict[str, Any]],
    models: Any = None,
    *,
    progress: bool = True,
    extra_log: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on ``records`` (MMedAgent conversations) into ``config.out``.

    ``models`` is the configuration's ``models`` section (``models.llm`` picks a larger backbone). Resumes
    from ``out/checkpoint`` when it holds one of the same run; returns at once when ``out`` holds a
    finished run of the same configuration. ``stop_after`` ends this invocation after that many steps
    with a checkpoint (training in pieces); the result then says ``finished=False``.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from tools.base import default_models
    from tools.llm import resolve_device

    if not records:
        raise ValueError("no training records")
    models = models if models is not None else default_models()
    config.out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(records)
    log_path = config.out / LOG_FILE
    if log_path.is_file() and (config.out / ADAPTER_WEIGHTS).is_file():
        finished = json.loads(log_path.read_text())
        keys = [k for k in (*RESUME_KEYS, "epochs") if not (k == "steps" and config.steps is None)]
        same = all(finished.get("config", {}).get(k) == _jsonable(getattr(config, k)) for k in keys)
        if same and finished.get("data_fingerprint") == fingerprint:
            logger.info("%s already holds this finished run; nothing to do", config.out)
            return TrainResult(
                config.out,
                finished["steps"],
                finished["examples"],
                finished["skipped"],
                finished["seconds"],
                finished["final_loss"],
                finished["steps"],
                finished.get("losses", []),
            )
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model, tokenizer, engine_name = backbone(models, device)
    encoded, skipped = encode_records(tokenizer, records, config.max_length)
    if not encoded:
        raise ValueError(f"every record is longer than max_length {config.max_length}")
    steps = config.steps or max(1, math.ceil(config.epochs * len(encoded) / config.batch_size))
    config.steps = steps
    state = _resume_state(config, fingerprint)
    torch.manual_seed(config.seed)
    model = lora_model(model, config)
    model.to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    warmup = math.ceil(config.warmup_ratio * steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    start, losses, seconds_before = 0, [], 0.0
    if state is not None:
        load_adapter_weights(model, config.out / CHECKPOINT)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, losses, seconds_before = state["step"], list(state["losses"]), float(state["seconds"])
        torch.set_rng_state(state["rng"])
        logger.info("resuming %s at step %d of %d", config.out, start, steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bf16 = use_bf16(config.precision, device)
    order = batch_order(
        [len(e.prompt) + len(e.reply) for e in encoded], config.batch_size, steps, config.seed
    )
    trainable = sum(p.numel() for p in parameters)
    logger.info(
        "LoRA r=%d alpha=%d on %s (%d trainable parameters), %d examples (%d too long), %d steps of %d, %s",
        config.rank,
        config.alpha,
        engine_name,
        trainable,
        len(encoded),
        skipped,
        steps,
        config.batch_size,
        "bfloat16 autocast" if bf16 else "float32",
    )
    started = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc="LoRA", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(start, steps):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in order[step]], pad_id).items()}
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = reply_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
        bar.update(1)
        bar.set_postfix(
            loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
        )
        done = step + 1
        stopping = stop_after is not None and done - start >= stop_after and done < steps
        if (done % config.save_every == 0 or stopping) and done < steps:
            elapsed = seconds_before + time.perf_counter() - started
            _save_checkpoint(
                model,
                optimizer,
                scheduler,
                done,
                {
                    "losses": losses,
                    "seconds": elapsed,
                    "data_fingerprint": fingerprint,
                    "rng": torch.get_rng_state(),
                },
                config,
                engine_name,
            )
        if stopping:
            bar.close()
            elapsed = seconds_before + time.perf_counter() - started
            logger.info("stopped after step %d of %d; run the same command again to resume", done, steps)
            return TrainResult(
                config.out, done, len(encoded), skipped, elapsed, losses[-1], start, losses, False
            )
    bar.close()
    seconds = seconds_before + time.perf_counter() - started
    save_adapter(model, config.out, engine_name)
    final_loss = sum(losses[-20:]) / max(1, len(losses[-20:]))
    log = {
        "config": {key: _jsonable(value) for key, value in asdict(config).items()},
        "backbone": engine_name,
        "device": device,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "torch_threads": torch.get_num_threads(),
        "trainable_parameters": trainable,
        "data_fingerprint": fingerprint,
        "data": data_summary(records),
        "examples": len(encoded),
        "skipped": skipped,
        "steps": steps,
        "warmup_steps": warmup,
        "resumed_from": start,
        "seconds": round(seconds, 1),
        "final_loss": round(final_loss, 5),
        "losses": losses,
        **(extra_log or {}),
    }
    log_path.write_text(json.dumps(log, indent=1, ensure_ascii=False))
    if (config.out / CHECKPOINT).exists():
        shutil.rmtree(config.out / CHECKPOINT)
    logger.info(
        "trained %d steps in %.0f s, final loss %.4f; adapter in %s", steps, seconds, final_loss, config.out
    )
    return TrainResult(config.out, steps, len(encoded), skipped, seconds, final_loss, start, losses)
