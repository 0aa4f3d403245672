"""The planner's instruction-tuning data: every task, modality and language, held-out phrasings, valid plans."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from agent_core.planner import data
from agent_core.planner.llm import ACTIONS_MARK, NOT_OFFERED, THOUGHTS_MARK, VALUE_MARK
from agent_core.protocol import Action, parse_plan
from agent_core.registry import ToolRegistry

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return ToolRegistry.default(entry_points=False)


@pytest.fixture(scope="module")
def cards(registry: ToolRegistry) -> list:
    return [tool.card for tool in registry.tools()]


@pytest.fixture(scope="module")
def dataset(cards: list) -> data.DataSet:
    return data.build_dataset(cards, 1000, 60, 300, seed=3)


def test_every_family_is_in_one_split_and_each_kind_is_trained_and_tested() -> None:
    splits = data.family_splits()
    families = data.all_families()
    assert len(splits) == len(families) == len({f.id for f in families})
    for kind in [*data.PHRASINGS, "connector"]:
        for language in data.LANGUAGES:
            members = [f.id for f in families if f.kind == kind and f.language == language]
            assert len(members) >= 3, (kind, language)
            assert {splits[m] for m in members} >= {"train", "test"}, (kind, language)
    assert {splits[f.id] for f in families if f.kind.startswith("clause:")} == {data.SHARED}


def test_training_only_frames_are_trained_and_leave_every_other_split_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    splits = data.family_splits()
    families = data.all_families()
    extra = [f for f in families if f.id.startswith(data.TRAINING_ONLY)]
    assert len(extra) >= 40 and {splits[f.id] for f in extra} == {"train"}
    assert {f.kind for f in extra} <= set(data.PHRASINGS)

    def words(template: str) -> str:
        return re.sub(r"[^\w{}]+", " ", template.lower()).strip()

    held_out = [f for f in families if splits[f.id] in ("val", "test")]
    for family in extra:  # no held-out frame, nor one within another (beyond a slot and a word)
        for template in map(words, family.templates):
            for other in held_out:
                if (other.kind, other.language) != (family.kind, family.language):
                    assert template not in map(words, other.templates), (family.id, other.id)
                    continue
                for held in map(words, other.templates):
                    shorter = min(template, held, key=len)
                    plain = [w for w in shorter.split() if not w.startswith("{")]
                    contained = shorter in (template if shorter == held else held)
                    assert template != held and not (contained and len(plain) >= 2), (family.id, other.id)
    monkeypatch.setattr(data, "TRAINING_PHRASINGS", {})
    without = data.family_splits()
    assert without == {k: v for k, v in splits.items() if not k.startswith(data.TRAINING_ONLY)}


def test_every_kind_and_language_has_many_frames_with_slots_that_fill() -> None:
    splits = data.family_splits()
    families = data.all_families()
    for kind in [*data.PHRASINGS, "connector"]:
        for language in data.LANGUAGES:
            members = [f for f in families if f.kind == kind and f.language == language]
            assert len(members) >= 12, (kind, language, len(members))
            assert sum(splits[f.id] == "train" for f in members) >= 9, (kind, language)
    for family in families:
        intent = family.kind.removeprefix("clause:")
        fillable = {"s", "t", "labels", "box", "pt", "f", "a", "b"}
        fillable |= set(data.KEYWORDS.get(intent, {}).get(family.language, {}))
        for template in family.templates:
            slots = set(re.findall(r"\{(\w+)\}", template))
            assert slots <= fillable, (family.id, template)
            if intent == "segmentation":  # one given prompt, and the frame it is on
                assert len(slots & {"box", "pt"}) == 1 and "f" in slots, (family.id, template)


def test_test_requests_use_phrasings_never_seen_in_training(dataset: data.DataSet) -> None:
    splits = data.family_splits()
    train_families = {f for e in dataset.train for f in e.family.split("+") if splits[f] != data.SHARED}
    train_texts = {e.instruction.lower() for e in dataset.train}
    for example in dataset.test:
        families = example.family.split("+")
        assert {splits[f] for f in families} <= {"test", data.SHARED}
        assert any(splits[f] == "test" for f in families)
        assert not train_families & set(families)
        assert example.instruction.lower() not in train_texts


def test_generation_is_deterministic_for_a_seed(cards: list) -> None:
    first = [e.instruction for e in data.generate("train", 50, cards, seed=7)]
    assert first == [e.instruction for e in data.generate("train", 50, cards, seed=7)]
    assert first != [e.instruction for e in data.generate("train", 50, cards, seed=8)]


def test_all_tasks_modalities_languages_and_kinds_of_request_occur(dataset: data.DataSet) -> None:
    for split in (dataset.train, dataset.test):
        tools = Counter(tool for e in split for tool in e.expected_tools)
        assert set(tools) == set(data.TASKS)
        assert {"CT", "MR", "CR", "DX", "US", "SM", ""} <= {e.modality for e in split}
        assert set(data.LANGUAGES) <= {e.language for e in split}
        assert any(len(e.expected_tools) >= 2 for e in split)  # several tools in one request
        assert any(not e.plan.actions and "unclear" in e.plan.thoughts for e in split)  # a question back
        assert any(not e.plan.actions and "no tool" in e.plan.thoughts for e in split)  # nothing to run
        assert any(not e.plan.actions and "not offered" in e.plan.thoughts for e in split)  # cannot run here
    structures = {p for e in dataset.train for p in e.expected_prompts}
    assert len(structures) >= 40


def test_every_plan_validates_uses_offered_tools_and_reads_back(
    dataset: data.DataSet, registry: ToolRegistry
) -> None:
    for example in [*dataset.train, *dataset.test]:
        plan = example.plan
        assert registry.validate(plan) == plan
        assert {a.API_name for a in plan.actions} <= set(example.offered)
        text = plan.to_mmedagent_text()
        assert text.startswith(THOUGHTS_MARK) and ACTIONS_MARK in text and VALUE_MARK in text
        assert parse_plan(text) == plan
        assert plan.value.strip()


def test_eval_requests_offer_what_the_registry_offers(dataset: data.DataSet, cards: list) -> None:
    for example in dataset.test:
        expected = tuple(c.name for c in cards if not example.modality or example.modality in c.modalities)
        assert example.offered == expected
        assert not example.study_description and not example.slices


def test_requests_for_structures_name_the_canonical_prompts(cards: list) -> None:
    everything = [c.name for c in cards]
    plan = data.build_plan([data.Part("grounded_segmentation", ["liver", "spleen"])], "CT", everything)
    assert plan.actions == (Action("grounded_segmentation", {"prompts": ["liver", "spleen"]}),)
    two_steps = data.build_plan(
        [data.Part("two_step", ["kidneys"]), data.Part("report_generation")], "CT", everything
    )
    assert [a.API_name for a in two_steps.actions] == ["grounding", "segmentation", "report_generation"]
    assert two_steps.actions[1].API_params == {"boxes": "$0.boxes"}


def test_a_tool_not_offered_is_named_and_the_rest_still_runs(cards: list) -> None:
    mr_tools = [c.name for c in cards if "MR" in c.modalities]
    alone = data.build_plan([data.Part("grounded_segmentation", ["brain tumor"])], "MR", mr_tools)
    assert alone.actions == ()
    assert "grounded_segmentation is not available for MR studies" in alone.value
    assert NOT_OFFERED.findall(alone.thoughts) == ["grounded_segmentation"]  # what the LLM planner checks
    mixed = data.build_plan(
        [data.Part("grounded_segmentation", ["brain tumor"]), data.Part("report_generation")], "MR", mr_tools
    )
    assert [a.API_name for a in mixed.actions] == ["report_generation"]
    assert "not offered for MR" in mixed.thoughts


def test_conversations_follow_mmedagents_format_and_eval_items_the_eval_format(
    dataset: data.DataSet, cards: list, tmp_path: Path
) -> None:
    example = next(e for e in dataset.train if e.expected_tools)
    record = data.conversation(example, cards)
    human, gpt = record["conversations"]
    assert (human["from"], gpt["from"]) == ("human", "gpt")
    assert human["value"].startswith("Tools:\n") and f"Request: {example.instruction}" in human["value"]
    assert all(f"{name}(" in human["value"] for name in example.offered)
    assert parse_plan(gpt["value"]) == example.plan
    item = data.eval_item(dataset.test[0])
    assert set(item) == {"id", "instruction", "modality", "body_part", "expected_tools", "expected_prompts"}
    counts = data.write_dataset(
        tmp_path, data.DataSet(dataset.train[:5], dataset.val[:3], dataset.test[:4]), cards
    )
    assert counts == {
        "train.jsonl": 5,
        "val.jsonl": 3,
        "val_eval.jsonl": 3,
        "test.jsonl": 4,
        "test_eval.jsonl": 4,
    }
    assert list(data.read_jsonl(tmp_path / "test_eval.jsonl")) == [
        data.eval_item(e) for e in dataset.test[:4]
    ]


def test_a_bad_jsonl_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        list(data.read_jsonl(path))


def test_requests_are_short_long_misspelled_and_in_four_languages(dataset: data.DataSet) -> None:
    texts = [e.instruction for e in dataset.train]
    assert min(len(t.split()) for t in texts) == 1
    assert max(len(t.split()) for t in texts) >= 12
    assert any("segmentiere" in t.lower() for t in texts) and any("segmenta " in t.lower() for t in texts)
    rng = random.Random(0)
    slipped = data.misspell("please segment the pancreas", rng)
    assert slipped != "please segment the pancreas" and len(slipped.split()) == 4
    assert data.strip_accents("épanchement") == "epanchement"


def test_a_new_tool_is_read_from_its_card_and_examples(cards: list) -> None:
    spec = {
        "name": "bone_age",
        "description": "Estimate the bone age from a hand radiograph.",
        "modalities": ["cr", "DX"],
        "examples": [{"instruction": f"bone age please {i}"} for i in range(9)]
        + [{"instruction": "girl bone age", "params": {"sex": "female"}}],
    }
    card = data.card_from_dict(spec)
    assert card.modalities == ("CR", "DX") and card.parameters["properties"] == {}
    split = data.split_new_tool_examples(data.new_tool_examples(spec))
    assert len(split["test"]) == 2 and len(split["train"]) == 8
    draws = data.new_tool_draws(card, split["train"], cards, 60, "train")
    on_its_modalities = [e for e in draws if e.modality in ("CR", "DX")]
    assert on_its_modalities and all(e.expected_tools == ["bone_age"] for e in on_its_modalities)
    assert all(not e.plan.actions for e in draws if e.modality not in ("CR", "DX"))
    old = next(e for e in data.generate("train", 200, cards) if e.modality == "CR")
    assert data.with_tool_offered(old, card).offered[-1] == "bone_age"
    replay = data.replay_draws(card, cards, 300, seed=1)
    assert len(replay) == 300 and replay == data.replay_draws(card, cards, 300, seed=1)
    assert {e.modality for e in replay} == {"CR", "DX", ""}  # where the added adapter is asked
    assert all(e.offered[-1] == "bone_age" and "bone_age" not in e.expected_tools for e in replay)
    assert len({e.instruction for e in replay}) > 200
    with pytest.raises(ValueError, match="'modalities' is missing"):
        data.card_from_dict({"name": "x", "description": "d"})
    with pytest.raises(ValueError, match="at least 5 'examples'"):
        data.new_tool_examples({"examples": [{"instruction": "a"}]})
    assert json.loads(json.dumps(data.eval_item(draws[0])))["expected_tools"] in (["bone_age"], [])


def test_frame_dropout_drops_frame_words_only_where_keywords_carry_the_request() -> None:
    rng = random.Random(4)
    assert data.drop_frame_words("zeig mir, wo {s} liegt", rng) == "zeig mir, wo {s} liegt"  # no keyword slot
    negated = "pas sur ce patient, en général : {k} {t}"
    assert data.drop_frame_words(negated, rng) == negated
    assert data.drop_frame_words("{v} {s}", rng) == "{v} {s}"
    changed = 0
    for languages in data.PHRASINGS.values():
        for rows in languages.values():
            for template in (t.strip() for row in rows for t in row.split(" | ")):
                dropped = data.drop_frame_words(template, rng)
                tokens, kept = template.split(" "), dropped.split(" ")
                assert re.findall(r"\{\w+\}", dropped) == re.findall(r"\{\w+\}", template), template
                assert len(tokens) - len(kept) in (0, 1, 2), (template, dropped)
                remaining = iter(tokens)
                assert all(token in remaining for token in kept), (template, dropped)  # in order
                changed += dropped != template
    assert changed > 400  # most frames name their task through a keyword slot


def test_only_training_requests_lose_frame_words_and_only_when_asked(cards: list) -> None:
    assert data.Generator("train", cards).frame_dropout == 0  # the data of the committed adapter
    with pytest.raises(ValueError, match="only training requests lose words"):
        data.Generator("test", cards, frame_dropout=0.3)
    with pytest.raises(ValueError, match="'frame_dropout' value 1.5 - must be between 0 and 1"):
        data.Generator("train", cards, frame_dropout=1.5)
    plain = data.Generator("train", cards, seed=5)
    noisy = data.Generator("train", cards, seed=5, frame_dropout=1.0)
    pairs = [(plain.draw(i).instruction, noisy.draw(i).instruction) for i in range(60)]
    assert sum(len(a.split()) > len(b.split()) for a, b in pairs) >= 10


def test_training_only_frames_are_drawn_only_when_asked_and_keep_the_held_out_requests(cards: list) -> None:
    plain = data.build_dataset(cards, 600, 40, 160, seed=4)
    more = data.build_dataset(cards, 600, 40, 160, seed=4, training_frames=True)
    # off by default: a seed draws the requests it drew before the frames were written
    default = data.Generator("train", cards).families.values()
    assert not any(f.id.startswith(data.TRAINING_ONLY) for families in default for f in families)
    assert not any(e.family.startswith(data.TRAINING_ONLY) for e in plain.train)
    drawn = Counter(e.family.startswith(data.TRAINING_ONLY) for e in more.train)
    assert drawn[True] >= 20 and drawn[False] >= 400
    # the held-out requests are those drawn without them, and no training request repeats one
    for split in ("val", "test"):
        assert [e.instruction for e in getattr(more, split)] == [e.instruction for e in getattr(plain, split)]
    held_out = {e.instruction.strip().lower() for e in more.val + more.test}
    assert not held_out & {e.instruction.strip().lower() for e in more.train}
    assert all(not e.family.startswith(data.TRAINING_ONLY) for e in more.val + more.test)
