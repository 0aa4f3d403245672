"""The LLM planner: the real SmolLM2 with the committed adapter plans held-out requests; bad output falls back.

The held-out sample is 100 requests of the committed ``test_eval.jsonl`` (phrasings the adapter never saw),
every fourth of the file; the full figures are in the adapter's MODEL_CARD.md. It is that large because a
smaller one misleads: an adapter that scored 0.84 on all 400 (the frame-dropout run in MODEL_CARD.md)
planned 20 of 20 right on the 20-request sample this test once used. The adapter must reach the issue's
goal on it (0.95 tool accuracy, 0.99 JSON validity) and plan far better than the rules planner. Training
is tested on a tiny randomly initialised LLaMA configured as ``models.llm`` (the "larger backbone" path),
which also shows that a run stopped half-way resumes to the same losses as one that was not.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from agent_core.planner import data
from agent_core.planner.evaluate import evaluate, load_items, registry_with, sample_items
from agent_core.planner.llm import (
    DEFAULT_ADAPTER,
    EXTENSION_FILE,
    EXTENSION_MIN_FIRST_PROBABILITY,
    THOUGHTS_MARK,
    AdapterLayer,
    Generation,
    LLMPlanner,
    _actions_closed,
    _draft,
    adapter_base,
    adapter_layers,
    card_line,
    encode_prompt,
    encode_reply,
    offered_cards,
    read_request,
    study_line,
    user_prompt,
    write_extension,
)
from agent_core.planner.rules import RulesPlanner, StudyContext
from agent_core.planner.train import TrainConfig, batch_order, train
from agent_core.protocol import Action
from agent_core.registry import ToolRegistry
from config import ConfigError
from config.settings import ModelsSection, PlannerSection, Settings, parse_settings
from tests.helpers.tiny_models import save_tiny_llama
from tools.llm import SMOLLM2_ENGINE

HELD_OUT = DEFAULT_ADAPTER / "test_eval.jsonl"
BONE_AGE_ADAPTER = DEFAULT_ADAPTER.parent / "smollm2-planner-bone-age"
CHEST_CT = StudyContext("CT", "CHEST")


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return ToolRegistry.default(entry_points=False)


@pytest.fixture(scope="module")
def planner(registry: ToolRegistry) -> LLMPlanner:
    planner = LLMPlanner(
        registry, Settings(planner=PlannerSection(kind="llm"), models=ModelsSection(device="cpu"))
    )
    planner.load()
    return planner


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


class ScriptedDecoder:
    """Writes a fixed text, with the real tokenizer, where the model would."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text

    def generate(self, prefix: list[int], request: list[int], max_new_tokens: int = 96) -> Generation:
        return Generation(self.text, 10, 3)


def scripted(planner: LLMPlanner, registry: ToolRegistry, text: str) -> LLMPlanner:
    scripted = LLMPlanner(registry, planner.settings)
    scripted._decoder = ScriptedDecoder(planner.load().tokenizer, text)  # type: ignore[assignment]
    return scripted


# ---------------------------------------------------------------------------------------------- prompt


def test_the_prompt_lists_the_tools_that_can_run_and_the_study_in_one_line(registry: ToolRegistry) -> None:
    on_mr = [card.name for card in offered_cards(registry, "MR")]
    assert "grounded_segmentation" not in on_mr and {"segmentation", "vqa", "retrieval"} <= set(on_mr)
    assert len(offered_cards(registry, "")) == len(registry.tools())
    assert card_line(registry.get("segmentation").card) == (
        "segmentation(boxes|points): Segment the structure inside each given box"
    )
    assert card_line(registry.get("classification").card).startswith("classification(labels?): ")
    line = study_line("CT", "CHEST", "CT THORAX W/O CONTRAST AND A VERY LONG DESCRIPTION TEXT", "", 120)
    assert line == "Study: CT CHEST | CT THORAX W/O CONTRAST AND A VERY LONG… | 120 images"
    assert study_line("") == "Study: unknown"
    prompt = user_prompt(offered_cards(registry, "CT"), line, "segment the liver")
    assert prompt.count("\n") == len(offered_cards(registry, "CT")) + 2
    assert prompt.endswith("Request: segment the liver")


def test_training_and_planning_split_the_prompt_the_same_way(
    planner: LLMPlanner, registry: ToolRegistry
) -> None:
    tokenizer = planner.load().tokenizer
    cards = offered_cards(registry, "CT")
    prefix, request = encode_prompt(tokenizer, user_prompt(cards, study_line("CT"), "find the liver"))
    other_prefix, _ = encode_prompt(tokenizer, user_prompt(cards, study_line("CR"), "hi"))
    assert prefix == other_prefix  # the same tools: the same cached prefix
    assert tokenizer.decode(request).startswith("Study: CT\nRequest: find the liver")
    assert tokenizer.decode(request).endswith(THOUGHTS_MARK)
    reply = encode_reply(tokenizer, f'{THOUGHTS_MARK}Locate liver.\n"actions🚀"[]\n"value👉"No.')
    assert reply[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


class RecordingDecoder(ScriptedDecoder):
    """A scripted decoder that keeps the request part of each prompt it is given, as text."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        super().__init__(tokenizer, text)
        self.requests: list[str] = []

    def generate(self, prefix: list[int], request: list[int], max_new_tokens: int = 96) -> Generation:
        self.requests.append(self.tokenizer.decode(request))
        return super().generate(prefix, request, max_new_tokens)


def test_a_request_typed_in_capitals_only_is_read_in_lower_case(
    planner: LLMPlanner, registry: ToolRegistry
) -> None:
    recording = LLMPlanner(registry, planner.settings)
    decoder = RecordingDecoder(planner.load().tokenizer, f'{THOUGHTS_MARK}x\n"actions🚀"[]\n"value👉"Hello.')
    recording._decoder = decoder  # type: ignore[assignment]
    for instruction in (
        "PLEASE REPORT THIS EXAM ASAP",
        "¿QUÉ PARTE DEL CUERPO ES?",
        "Segment the LV",
        "hi 3",
    ):
        recording.plan(instruction, CHEST_CT)
    requests = [re.search(r"Request: (.*?)<\|im_end\|>", text)[1] for text in decoder.requests]
    assert requests == [
        "please report this exam asap",
        "¿qué parte del cuerpo es?",
        "Segment the LV",
        "hi 3",
    ]
    assert read_request("Beurteile den Lungenrundherd") == "Beurteile den Lungenrundherd"


# --------------------------------------------------------------------------------- an adapter add-tool wrote


BONE_AGE_SPEC = DEFAULT_ADAPTER / "pseudo_tool_bone_age.json"
BONE_AGE_PLAN = f'{THOUGHTS_MARK}Estimate the bone age.\n"actions🚀"[{{"API_name": "bone_age", "API_params": {{}}}}]\n"value👉"'
VQA_PLAN = f'{THOUGHTS_MARK}Answer.\n"actions🚀"[{{"API_name": "vqa", "API_params": {{"question": "what is it?"}}}}]\n"value👉"'
REPORT_PLAN = (
    f'{THOUGHTS_MARK}Report.\n"actions🚀"[{{"API_name": "report_generation", "API_params": {{}}}}]\n"value👉"'
)


class PromptedDecoder(RecordingDecoder):
    """Writes the text of the first key found in the request, else ``default``, and records each prompt;
    ``unsure`` gives the first word's probability for requests with one of its keys (else 0.9)."""

    def __init__(
        self, tokenizer: Any, replies: dict[str, str], default: str, unsure: dict[str, float] | None = None
    ) -> None:
        super().__init__(tokenizer, default)
        self.replies = replies
        self.unsure = unsure or {}
        self.prompts: list[str] = []

    def generate(self, prefix: list[int], request: list[int], max_new_tokens: int = 96) -> Generation:
        self.prompts.append(self.tokenizer.decode(prefix + request))
        asked = self.tokenizer.decode(request)
        self.requests.append(asked)
        text = next((reply for key, reply in self.replies.items() if key in asked), self.text)
        probability = next((p for key, p in self.unsure.items() if key in asked), 0.9)
        return Generation(text, 10, 3, probability)


def test_an_added_tool_plans_only_the_requests_that_call_it(planner: LLMPlanner) -> None:
    """The newest adapter is asked first where its tool can run; other requests go to the one it extends."""
    card = data.card_from_dict(json.loads(BONE_AGE_SPEC.read_text()))
    registry = registry_with([card])
    tokenizer = planner.load().tokenizer
    # the added adapter: bone_age for "hand", a wrong old-tool plan for "nodule", unparsable text for "junk"
    added = PromptedDecoder(tokenizer, {"hand": BONE_AGE_PLAN, "junk": "no plan at all"}, REPORT_PLAN)
    extended = PromptedDecoder(tokenizer, {}, VQA_PLAN)
    layered = LLMPlanner(registry, planner.settings)
    layered._decoder = added  # type: ignore[assignment]
    layered._layers = [(frozenset({"bone_age"}), added, 0.5), (frozenset(), extended, 0.5)]  # type: ignore[list-item]
    hand = StudyContext("CR", "HAND")

    plan, source = layered.plan_with_source("how old are the bones of this hand?", hand)
    assert [a.API_name for a in plan.actions] == ["bone_age"] and source.planner == "llm"
    assert len(extended.prompts) == 0  # the added adapter's plan calls its tool: used as it is

    for request in ("is this nodule benign?", "junk"):
        plan, source = layered.plan_with_source(request, hand)
        assert [a.API_name for a in plan.actions] == ["vqa"] and source.json_valid
    assert len(added.prompts) == 3 and len(extended.prompts) == 2
    assert all("bone_age" in prompt for prompt in added.prompts)
    assert not any("bone_age" in prompt for prompt in extended.prompts)  # as before the tool was added

    plan, _ = layered.plan_with_source("how old are the bones of this hand?", CHEST_CT)
    assert len(added.prompts) == 3  # bone_age cannot run on CT: the added adapter is not asked
    assert [a.API_name for a in plan.actions] == ["vqa"]


def test_an_added_tool_is_called_only_when_its_adapter_is_sure_enough(planner: LLMPlanner) -> None:
    """A new tool's plan whose first word had less than the layer's ``min_first_probability`` is set aside."""
    card = data.card_from_dict(json.loads(BONE_AGE_SPEC.read_text()))
    tokenizer = planner.load().tokenizer
    added = PromptedDecoder(tokenizer, {}, BONE_AGE_PLAN, unsure={"rippen": 0.85, "hand": 0.86})
    extended = PromptedDecoder(tokenizer, {}, VQA_PLAN)
    layered = LLMPlanner(registry_with([card]), planner.settings)
    layered._decoder = added  # type: ignore[assignment]
    layered._layers = [(frozenset({"bone_age"}), added, 0.86), (frozenset(), extended, 0.5)]  # type: ignore[list-item]
    plan, _ = layered.plan_with_source("how old are the bones of this hand?", StudyContext("DX", "HAND"))
    assert [a.API_name for a in plan.actions] == ["bone_age"] and not extended.prompts
    plan, source = layered.plan_with_source("kurz: wo ist die rippenfraktur?", StudyContext("DX", "CHEST"))
    assert [a.API_name for a in plan.actions] == ["vqa"] and source.planner == "llm"
    assert len(added.prompts) == 2 and len(extended.prompts) == 1
    assert "bone_age" not in extended.prompts[0]
    # calibration reads the newest adapter's own call, whatever its threshold
    assert layered.newest_adapter_call("kurz: wo ist die rippenfraktur?", StudyContext("DX", "CHEST")) == (
        ["bone_age"],
        0.85,
    )
    assert layered.newest_adapter_call("any fracture?", CHEST_CT) is None  # bone_age cannot run on CT


def fake_adapter(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_an_extension_names_the_adapter_it_extends_and_pins_its_weights(tmp_path: Path) -> None:
    base = fake_adapter(tmp_path / "adapters" / "base", b"base weights")
    first = fake_adapter(tmp_path / "adapters" / "first", b"first")
    write_extension(first, base, ["bone_age"])
    assert json.loads((first / EXTENSION_FILE).read_text())["extends"] == "../base"  # they move together
    second = fake_adapter(tmp_path / "elsewhere" / "second", b"second")
    write_extension(second, first, ["fracture_score", "age"])
    assert json.loads((second / EXTENSION_FILE).read_text())["extends"] == str(first.resolve())
    assert adapter_layers(second) == [
        AdapterLayer(second, frozenset({"fracture_score", "age"})),
        AdapterLayer(first.resolve(), frozenset({"bone_age"})),
        AdapterLayer(base.resolve(), frozenset()),
    ]
    assert adapter_layers(base) == [AdapterLayer(base, frozenset())]

    (first / "adapter_config.json").write_text("{}")
    assert PlannerSection(adapter=first).adapter == first
    (base / "adapter_model.safetensors").write_bytes(b"retrained")
    with pytest.raises(ValueError, match=r"first/extension.json: the adapter it extends, .*base, changed"):
        adapter_layers(second)
    with pytest.raises(ConfigError, match=r"planner.adapter.*the adapter it extends, .*base, changed"):
        parse_settings({"planner": {"kind": "llm", "adapter": str(first)}}, environ={})
    (base / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"'extends' names .*base, which has no adapter_model.safetensors"):
        adapter_layers(first)
    (first / EXTENSION_FILE).write_text('{"extends": "../base"}')
    with pytest.raises(ValueError, match=r"first/extension.json: unreadable \(KeyError"):
        adapter_layers(first)


def test_an_extension_keeps_the_first_word_probability_its_tool_needs(tmp_path: Path) -> None:
    base = fake_adapter(tmp_path / "base", b"base weights")
    added = fake_adapter(tmp_path / "added", b"added")
    write_extension(added, base, ["bone_age"], 0.86)
    assert adapter_layers(added)[0] == AdapterLayer(added, frozenset({"bone_age"}), 0.86)
    write_extension(added, base, ["bone_age"])  # not calibrated: more than all other first words together
    assert adapter_layers(added)[0].min_first_probability == EXTENSION_MIN_FIRST_PROBABILITY == 0.5
    spec = json.loads((added / EXTENSION_FILE).read_text())
    for wrong, error in ((1.5, "must be between 0 and 1, not 1.5"), ("high", "unreadable \\(ValueError")):
        (added / EXTENSION_FILE).write_text(json.dumps({**spec, "min_first_probability": wrong}))
        with pytest.raises(ValueError, match=rf"added/extension.json: .*{error}"):
            adapter_layers(added)


def test_decoding_stops_at_the_end_of_a_non_empty_action_list() -> None:
    assert (
        _actions_closed('"thoughts🤔"x\n"actions🚀"[{"API_name": "vqa", "API_params": {"q": "a]"}}]') is True
    )
    assert _actions_closed('"thoughts🤔"x\n"actions🚀"[]') is False
    assert _actions_closed('"thoughts🤔"x\n"actions🚀"[{"API_name": "vqa"') is None
    assert _actions_closed('"thoughts🤔"x') is None
    assert _draft([1, 2, 3, 9, 1, 2], ([1, 2, 3, 9, 1, 2],), 3) == [3, 9, 1]
    assert _draft([7, 8], ([7, 8], [5, 7, 8, 4, 4]), 2) == [4, 4]


def test_speculative_decoding_gives_the_greedy_text(planner: LLMPlanner, registry: ToolRegistry) -> None:
    import torch

    decoder = planner.load()
    cards = offered_cards(registry, "US")
    prefix, request = encode_prompt(
        decoder.tokenizer, user_prompt(cards, study_line("US", "NECK"), "any thyroid nodule?")
    )
    generation = decoder.generate(prefix, request, max_new_tokens=30)
    with torch.inference_mode():
        greedy = decoder.model.generate(
            torch.tensor([prefix + request]),
            max_new_tokens=generation.tokens,
            do_sample=False,
            pad_token_id=2,
        )
    text = decoder.tokenizer.decode(greedy[0, len(prefix + request) :], skip_special_tokens=True)
    assert generation.text == THOUGHTS_MARK + text
    assert generation.forward_passes < generation.tokens
    with torch.inference_mode():  # the first token's probability, from one plain forward pass
        first = decoder.model(torch.tensor([prefix + request])).logits[0, -1].float().softmax(-1)
    assert generation.first_probability == pytest.approx(
        float(first[greedy[0, len(prefix + request)]]), abs=1e-3
    )
    assert 0.0 < generation.first_probability <= 1.0


# ---------------------------------------------------------------------------------------- the adapter


def test_the_committed_adapter_is_small_documented_and_the_default(planner: LLMPlanner) -> None:
    assert (DEFAULT_ADAPTER / "adapter_model.safetensors").stat().st_size < 20 * 1024 * 1024
    assert adapter_base(DEFAULT_ADAPTER) == SMOLLM2_ENGINE
    card = (DEFAULT_ADAPTER / "MODEL_CARD.md").read_text()
    for fact in ("seed", "steps", "tool accuracy", "JSON validity", "bone_age"):
        assert fact.lower() in card.lower(), fact
    assert planner.adapter_path(SMOLLM2_ENGINE) == DEFAULT_ADAPTER
    assert planner.adapter_path("LLM my-model") is None  # trained for another backbone: not applied


@pytest.fixture(scope="module")
def held_out(planner: LLMPlanner, registry: ToolRegistry) -> dict[str, Any]:
    """The LLM planner's and the rules planner's reports on the same 100 held-out requests."""
    items = sample_items(load_items(HELD_OUT), 100)
    return {
        "llm": evaluate(planner, items, registry),
        "rules": evaluate(RulesPlanner(registry), items, registry),
    }


def test_the_committed_adapter_reaches_the_goal_on_held_out_requests(held_out: dict[str, Any]) -> None:
    report = held_out["llm"]
    wrong = [row for row in report["items"] if not row["ok"]]
    assert report["tool_accuracy"] >= 0.95, wrong
    assert report["json_valid_rate"] >= 0.99, wrong


def test_the_committed_bone_age_adapter_adds_its_tool_and_keeps_the_old_plans(
    planner: LLMPlanner, held_out: dict[str, Any]
) -> None:
    """MMedAgent's pseudo-tool experiment with the adapter ``add-tool`` wrote (MODEL_CARD.md, "Adding a tool")."""
    assert adapter_layers(BONE_AGE_ADAPTER) == [
        AdapterLayer(BONE_AGE_ADAPTER, frozenset({"bone_age"}), 0.87),
        AdapterLayer(DEFAULT_ADAPTER, frozenset()),
    ]
    card = data.card_from_dict(json.loads(BONE_AGE_SPEC.read_text()))
    registry = registry_with([card])
    extended = LLMPlanner(registry, planner.settings, adapter=BONE_AGE_ADAPTER)
    # the goal test's held-out requests on studies where bone_age runs: the only ones the new adapter sees
    before = {row["id"]: row for row in held_out["llm"]["items"]}
    old = [item for item in sample_items(load_items(HELD_OUT), 100) if item.modality in ("CR", "DX", "")]
    after = evaluate(extended, old, registry)
    assert len(old) >= 20 and after["json_valid_rate"] == 1.0
    # none is read as bone_age with the calibrated min_first_probability: each keeps its plan
    changed = [
        row for row in after["items"] if row["predicted_tools"] != before[row["id"]]["predicted_tools"]
    ]
    assert not changed, changed
    new = evaluate(extended, load_items(BONE_AGE_ADAPTER / "new_tool_test_eval.jsonl"), registry)
    # 15 of 24 in MODEL_CARD.md; two of them are within 0.01 of the threshold, so one may tip on other CPUs
    assert new["n"] == 24 and new["tool_accuracy"] >= 14 / 24, new["items"]


def test_the_committed_adapter_plans_held_out_requests_better_than_the_rules(
    held_out: dict[str, Any],
) -> None:
    llm, rules = held_out["llm"], held_out["rules"]
    assert llm["tool_accuracy"] >= rules["tool_accuracy"] + 0.2, (
        llm["tool_accuracy"],
        rules["tool_accuracy"],
    )
    assert llm["prompt_recall"] > rules["prompt_recall"]
    assert llm["json_valid_rate"] >= 0.95


def test_a_plan_names_canonical_structures_and_the_value_is_written(planner: LLMPlanner) -> None:
    plan, source = planner.plan_with_source(
        "Please segment the liver and the spleen", StudyContext("CT", "ABDOMEN")
    )
    assert source.planner == "llm" and source.json_valid
    assert plan.actions == (Action("grounded_segmentation", {"prompts": ["liver", "spleen"]}),)
    assert plan.value == "Running grounded_segmentation (liver, spleen)."
    assert source.text.startswith(THOUGHTS_MARK)


# ------------------------------------------------------------------------------------------- fallback


def test_text_that_is_not_a_plan_falls_back_to_the_rules_planner_and_is_logged(
    planner: LLMPlanner, registry: ToolRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    broken = scripted(planner, registry, f"{THOUGHTS_MARK}I think you should consult a doctor.")
    with caplog.at_level(logging.WARNING, logger="agent_core.planner.llm"):
        plan, source = broken.plan_with_source("Segment both lungs", CHEST_CT)
    assert source.planner == "rules" and not source.json_valid and "actions" in source.reason
    assert [a.API_name for a in plan.actions] == ["grounded_segmentation"]
    assert "falling back to the rules planner" in caplog.text
    assert broken.plan("Segment both lungs", CHEST_CT) == plan


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '"actions🚀"[{"API_name": "grounded_segmentation", "API_params": {"prompts": ["brain"]}}]',
            "not offered",
        ),
        ('"actions🚀"[{"API_name": "teleport", "API_params": {}}]', "unknown tool"),
        ('"actions🚀"[{"API_name": "segmentation", "API_params": {"size": 3}}]', "segmentation"),
        ('"actions🚀"[]\n"value👉"', "neither actions nor a reply"),
    ],
)
def test_a_plan_the_registry_or_the_study_refuses_falls_back(
    planner: LLMPlanner, registry: ToolRegistry, text: str, reason: str
) -> None:
    plan, source = scripted(planner, registry, f"{THOUGHTS_MARK}x\n{text}").plan_with_source(
        "hello", StudyContext("MR")
    )
    assert source.planner == "rules" and reason in source.reason


def test_a_point_written_with_four_numbers_is_a_box_and_a_box_with_two_a_point(
    planner: LLMPlanner, registry: ToolRegistry
) -> None:
    """The model's slip on requests with coordinates: the plan is used, with each prompt where it fits."""
    head = f'{THOUGHTS_MARK}Segment from the given prompts.\n"actions🚀"[{{"API_name": "segmentation", "API_params": '
    text = head + (
        '{"points": [{"label": "bladder", "frame": 227, "xy": [277, 332, 381, 472]},'
        ' {"label": "kidney", "frame": 3, "xy": [10, 20]}], "boxes": [{"label": "liver", "frame": 5, "xyxy": [321, 111]}]}}]'
    )
    plan, source = scripted(planner, registry, text).plan_with_source("segment these", CHEST_CT)
    assert source.planner == "llm", source.reason
    assert plan.actions[0].API_params == {
        "points": [
            {"label": "kidney", "frame": 3, "xy": [10, 20]},
            {"label": "liver", "frame": 5, "xy": [321, 111]},
        ],
        "boxes": [{"label": "bladder", "frame": 227, "xyxy": [277, 332, 381, 472]}],
    }
    # three numbers fit neither: refused by the registry, as before
    three = head + '{"points": [{"label": "bladder", "frame": 227, "xy": [277, 332, 381]}]}}]'
    plan, source = scripted(planner, registry, three).plan_with_source("segment these", CHEST_CT)
    assert source.planner == "rules" and "xy" in source.reason


def test_thoughts_that_call_an_offered_tool_unavailable_fall_back(
    planner: LLMPlanner, registry: ToolRegistry
) -> None:
    text = f'{THOUGHTS_MARK}Locate spleen needs grounding, not offered for CT.\n"actions🚀"[]\n"value👉"I cannot.'
    plan, source = scripted(planner, registry, text).plan_with_source("find the spleen", CHEST_CT)
    assert source.planner == "rules" and "grounding is not offered, but it is" in source.reason
    on_mr = scripted(planner, registry, text.replace("CT", "MR")).plan_with_source(
        "find the spleen", StudyContext("MR")
    )
    assert on_mr[1].planner == "llm" and on_mr[0].actions == ()


def test_a_model_that_cannot_load_falls_back_and_says_why(registry: ToolRegistry, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{not json")
    planner = LLMPlanner(registry, Settings(models=ModelsSection(device="cpu")), adapter=tmp_path)
    plan, source = planner.plan_with_source("Segment both lungs", CHEST_CT)
    assert source.planner == "rules" and "cannot load" in source.reason
    assert plan.actions and plan.actions[0].API_name == "grounded_segmentation"


# ------------------------------------------------------------------------------------------- training


def records(count: int) -> list[dict[str, Any]]:
    cards = data.default_cards()
    return [data.conversation(e, cards) for e in data.generate("train", count, cards, seed=1)]


def test_batches_are_seeded_cover_every_example_and_group_similar_lengths() -> None:
    lengths = [i % 37 for i in range(96)]
    order = batch_order(lengths, 4, 24, seed=5)
    assert order == batch_order(lengths, 4, 24, seed=5) != batch_order(lengths, 4, 24, seed=6)
    assert sorted(i for batch in order for i in batch) == list(range(96))
    assert max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order) < 20


def test_training_a_configured_backbone_resumes_where_it_stopped(tiny_llama: Path, tmp_path: Path) -> None:
    models = ModelsSection(device="cpu", llm=tiny_llama)
    conversations = records(12)

    def config(out: Path) -> TrainConfig:
        return TrainConfig(
            out=out, rank=2, alpha=4, steps=4, batch_size=3, save_every=100, max_length=512, seed=2
        )

    whole = train(config(tmp_path / "whole"), conversations, models, progress=False)
    assert whole.finished and whole.steps == 4 and len(whole.losses) == 4
    first = train(config(tmp_path / "pieces"), conversations, models, progress=False, stop_after=3)
    assert not first.finished and (tmp_path / "pieces" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "pieces" / "adapter_model.safetensors").exists()
    second = train(config(tmp_path / "pieces"), conversations, models, progress=False)
    assert second.finished and second.resumed_from == 3
    assert second.losses == pytest.approx(whole.losses, rel=1e-4)
    assert not (tmp_path / "pieces" / "checkpoint").exists()
    log = json.loads((tmp_path / "pieces" / "training_log.json").read_text())
    assert (
        log["config"]["rank"] == 2
        and log["resumed_from"] == 3
        and log["backbone"] == f"LLM {tiny_llama.name}"
    )
    again = train(config(tmp_path / "pieces"), conversations, models, progress=False)
    assert again.resumed_from == again.steps  # a finished run is left as it is
    train(config(tmp_path / "pieces2"), conversations, models, progress=False, stop_after=1)
    other = config(tmp_path / "pieces2")
    other.rank = 3
    with pytest.raises(ValueError, match="checkpoint of another run.*rank 2 there, 3 now"):
        train(other, conversations, models, progress=False)

    planner = LLMPlanner(
        ToolRegistry.default(entry_points=False),
        Settings(models=models),
        adapter=tmp_path / "pieces",
        device="cpu",
    )
    plan, source = planner.plan_with_source("Segment both lungs", CHEST_CT)  # random weights: rules take over
    assert source.planner in ("llm", "rules") and plan is not None


def test_the_committed_adapter_is_not_applied_to_another_backbone(
    tiny_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    planner = LLMPlanner(
        ToolRegistry.default(entry_points=False), Settings(models=ModelsSection(device="cpu", llm=tiny_llama))
    )
    with caplog.at_level(logging.WARNING, logger="agent_core.planner.llm"):
        plan, source = planner.plan_with_source("Segment both lungs", CHEST_CT)
    assert "runs without an adapter" in caplog.text
    assert plan.actions  # whatever the random model wrote, a usable plan comes back


def test_add_tool_continues_an_adapter_in_its_own_shape_and_scores_before_and_after(
    tiny_llama: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``medagent planner add-tool`` on a configured backbone: the new adapter keeps the base's LoRA shape."""
    from dicom_node.cli import main

    config = tmp_path / "node.yaml"
    config.write_text(f"models: {{device: cpu, llm: {tiny_llama}}}\n")
    base = tmp_path / "base"
    train(
        TrainConfig(out=base, rank=2, alpha=4, steps=2, batch_size=3, max_length=512, seed=2),
        records(6),
        ModelsSection(device="cpu", llm=tiny_llama),
        progress=False,
    )
    old = tmp_path / "old.jsonl"
    old.write_text(
        json.dumps({"id": "o1", "instruction": "segment the liver", "modality": "CT", "body_part": "ABDOMEN",
                    "expected_tools": ["grounded_segmentation"], "expected_prompts": ["liver"]}) + "\n"
    )  # fmt: skip
    spec = DEFAULT_ADAPTER / "pseudo_tool_bone_age.json"
    out = tmp_path / "with-bone-age"
    arguments = ["planner", "add-tool", "--config", str(config), "--tool", str(spec), "--adapter", str(base)]
    arguments += [
        "--out",
        str(out),
        "--steps",
        "2",
        "--new-examples",
        "6",
        "--replay",
        "6",
        "--batch-size",
        "3",
        "--calibrate",
        "8",
    ]
    assert main([*arguments, "--evaluate", str(old), "--no-progress", "--max-length", "512"]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert (
        log["config"]["rank"] == 2
        and log["config"]["alpha"] == 4
        and log["config"]["init_adapter"] == str(base)
    )
    assert json.loads((out / "tool.json").read_text())["name"] == "bone_age"
    layers = adapter_layers(out)
    assert [(layer.path, layer.added_tools) for layer in layers] == [
        (out, frozenset({"bone_age"})),
        (base.resolve(), frozenset()),
    ]
    # calibrated on 8 old-tool val requests: at least 0.5, and above each false call of bone_age
    printed = capsys.readouterr().out
    calibration = re.search(r"(\d+) of 8 old-tool val requests called an added tool \(first-word "
                            r"probabilities: ([^)]*)\); min_first_probability (\S+)", printed)  # fmt: skip
    assert calibration, printed
    found = [] if calibration[2] == "none" else [float(p) for p in calibration[2].split(", ")]
    assert len(found) == int(calibration[1])
    threshold = json.loads((out / EXTENSION_FILE).read_text())["min_first_probability"]
    assert layers[0].min_first_probability == threshold == float(calibration[3])
    assert threshold >= 0.5 and all(p < threshold for p in found)
    # configured where bone_age is not registered: both adapters load, the added one is never asked
    unregistered = LLMPlanner(
        ToolRegistry.default(entry_points=False),
        Settings(models=ModelsSection(device="cpu", llm=tiny_llama)),
        adapter=out,
    )
    with caplog.at_level(logging.WARNING, logger="agent_core.planner.llm"):
        plan, _ = unregistered.plan_with_source("estimate the bone age", StudyContext("CR", "HAND"))
    assert len(unregistered._layers) == 2 and "bone_age" not in [a.API_name for a in plan.actions]
    assert "adds bone_age, not registered here" in caplog.text
    table = json.loads((out / "add_tool_eval.json").read_text())
    assert set(table) == {"old tools, before", "old tools, after", "new tool, before", "new tool, after"}
    assert table["old tools, before"]["n"] == 1 and table["new tool, after"]["n"] >= 20
    assert "old tools, after" in printed


def test_train_continues_an_adapter_in_its_own_shape(tiny_llama: Path, tmp_path: Path) -> None:
    """``medagent planner train --init-adapter``: the run starts from the adapter and keeps its LoRA shape."""
    from dicom_node.cli import main

    config = tmp_path / "node.yaml"
    config.write_text(f"models: {{device: cpu, llm: {tiny_llama}}}\n")
    models = ModelsSection(device="cpu", llm=tiny_llama)
    base = tmp_path / "base"
    train(TrainConfig(out=base, rank=2, alpha=4, steps=1, batch_size=3, max_length=512, seed=2), records(3), models,
          progress=False)  # fmt: skip
    conversations = tmp_path / "conversations.jsonl"
    data.write_jsonl(conversations, records(6))
    out = tmp_path / "continued"
    arguments = ["planner", "train", "--config", str(config), "--data", str(conversations), "--out", str(out)]
    arguments += ["--steps", "2", "--batch-size", "3", "--max-length", "512", "--no-progress"]
    assert main([*arguments, "--init-adapter", str(base)]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert (log["config"]["init_adapter"], log["config"]["rank"], log["config"]["alpha"]) == (str(base), 2, 4)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2  # not the command's default 128

    with pytest.raises(SystemExit, match="cannot read the adapter .*nowhere"):
        main([*arguments, "--init-adapter", str(tmp_path / "nowhere")])


def test_calibrate_says_what_is_wrong_with_its_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dicom_node.cli import main

    calibrate = ["planner", "calibrate", "--tool", str(BONE_AGE_SPEC), "--requests", "4"]
    assert main([*calibrate, "--adapter", str(DEFAULT_ADAPTER)]) == 2
    assert "not an adapter that add-tool wrote (no extension.json)" in capsys.readouterr().err
    base = fake_adapter(tmp_path / "base", b"base weights")
    added = fake_adapter(tmp_path / "added", b"added")
    write_extension(added, base, ["fracture_score"])
    assert main([*calibrate, "--adapter", str(added)]) == 2
    assert "give the SPEC.json of ['fracture_score']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*calibrate, "--adapter", str(added), "--requests", "-3"])
    assert "argument --requests: Invalid value '-3' - must be 0 or more" in capsys.readouterr().err
