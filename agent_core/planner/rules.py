"""The rules planner: declarative rules over the study's DICOM keywords and the instruction's intents.

A rule is data, in the schema of ``planner.rules`` in the configuration (those are tried first, then
``DEFAULT_RULES``)::

    {"name": "chest-ct-lungs",                      # unique; named in the plan's thoughts
     "when": {"Modality": "CT",                     # DICOM keyword -> condition, all must hold:
              "BodyPartExamined": {"regex": "CHEST|THORAX|LUNG"},   #   exact value (case-insensitive),
              "SliceThickness": {"range": [0, 10]},                 #   regex (searched, case-insensitive),
              "ImageType": {"any_of": ["AXIAL"]}},                  #   in, range [lo, hi] (null: open),
                                                                    #   any_of / all_of (multi-values)
     "intent": "segment",                           # or a list: segment, locate (detect), classify,
                                                    #   report, knowledge (explain), vqa (visual question)
     "keywords": ["lung", "lungs"],                 # optional: one must be in the instruction (* = any letters)
     "actions": [{"API_name": "grounded_segmentation", "API_params": {"prompts": "$structures"}}],
     "value": "Segmenting $structures."}            # optional: the reply; "thoughts" too

A keyword missing from the study's metadata fails its condition. Placeholders in ``API_params`` and
``value``: ``$structures`` (the structures the instruction names; a rule needing it does not apply when
there are none), ``$labels`` (candidate labels after "as", "into" or "between"; the parameter is left out
when there are none), ``$question`` (the question sentences of the instruction) and ``$instruction``.
``"$0.boxes"`` names an earlier action's output, as in any plan.

The instruction's intents are found by keyword patterns (English, with common misspellings and short
forms). Each intent is planned by the first rule that applies and whose tools are ready and list the
study's modality; the actions of several intents are joined in order (the tools that look at the image
first, questions next, the report last), an action asked twice runs once. What no rule can do is said
plainly in the plan's ``value``; an unclear request gets a plan with no actions that asks what is wanted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from agent_core.protocol import REFERENCE, Action, Plan, PlanError
from agent_core.registry import ToolRegistry
from config.settings import ConfigError

logger = logging.getLogger(__name__)


class Intent(str, Enum):
    """What a request asks for; a rule names the intents it plans."""

    SEGMENT = "segment"
    LOCATE = "locate"
    CLASSIFY = "classify"
    REPORT = "report"
    KNOWLEDGE = "knowledge"
    VQA = "vqa"

    @classmethod
    def coerce(cls, value: Intent | str) -> Intent:
        """An intent from its value or one of its other names ("detect", "explain", "visual question")."""
        if isinstance(value, Intent):
            return value
        text = re.sub(r"[\s_-]+", " ", str(value).strip().lower())
        intent = _INTENT_NAMES.get(text)
        if intent is None:
            raise ValueError(f"Invalid intent {value!r} - must be one of {sorted(_INTENT_NAMES)}")
        return intent


_INTENT_NAMES = {
    **{intent.value: intent for intent in Intent},
    "detect": Intent.LOCATE,
    "explain": Intent.KNOWLEDGE,
    "knowledge question": Intent.KNOWLEDGE,
    "visual question": Intent.VQA,
}

#: intents planned in this order (then by where the instruction asks): looking at the image, questions,
#: and the report last, since it reads what the others found
_INTENT_RANK = {
    Intent.SEGMENT: 0,
    Intent.LOCATE: 0,
    Intent.CLASSIFY: 0,
    Intent.VQA: 1,
    Intent.KNOWLEDGE: 1,
    Intent.REPORT: 2,
}

#: what the instruction says, lower-cased, for each intent that names a task; patterns are searched
INTENT_PATTERNS: dict[Intent, tuple[str, ...]] = {
    Intent.SEGMENT: (
        r"\bseg\b",
        r"\b(?:segm|segmnt|sgment|segement|segmant)\w*",
        r"\boutlin\w*",
        r"\bcontour\w*",
        r"\bdelineat\w*",
        r"\bmask\w*",
        r"\bvolum\w*",
        r"\b(?:measur|mesur|quantif)\w*",
        r"\bhow (?:big|large)\b",
        r"\bsize\b",
    ),
    Intent.LOCATE: (
        r"\b(?:locat|loacte|locali[sz])\w*",
        r"\b(?:detect|detet)\w*",
        r"\bfind\b",
        r"\b(?:where|wher|wheres)\b",
        r"\bbounding box\w*",
        r"\bbox(?:es)?\b",
        r"\bgrounding\b",
        r"\bpoint out\b",
        r"\bhighlight\w*",
    ),
    Intent.CLASSIFY: (
        r"\bcla(?:s){1,2}if\w*",
        r"\bcategori[sz]\w*",
        r"\bmodalit(?:y|ies)\b",
        r"\b(?:what|wat|wht|which)\s+(?:kind|knd|type|sort)\s+of\s+(?:image|img|scan|picture|pic|study|exam|imaging)\b",
        r"\b(?:image|scan)[- ]type\b",
        r"\b(?:what|wat)(?:'s|\s+is)\s+(?:this|the)\s+(?:image|img|picture|pic|scan)(?=\s*(?:\?|\.|$))",
    ),
    Intent.REPORT: (
        r"\b(?:write|writ|generate|create|make|draft|produce|prepare|give|compose|dictate)\w*\b(?:\s+\w+){0,3}?\s+re(?:port|prot|pot)s?\b",
        r"\b(?:a|an|the|my|radiology|radiological|medical|diagnostic|full|short|brief|structured)\s+(?:\w+\s+)?re(?:port|prot|pot)s?\b",
        r"\bre(?:port|prot|pot)s?\s+(?:on|for|of)\s+(?:this|the)\s+(?:image|study|scan|exam|case|series)\b",
        r"^\W*re(?:port|prot|pot)s?\W*$",
        r"\breport generation\b",
        r"\bmrg\b",
        r"\bfindings\b",
        r"\bimpression\b",
        r"\bdescri(?:be|ption)\b(?:\s+of)?\s+(?:the|this)\s+(?:image|study|scan|exam|x-?ray|radiograph|ct|mri?|film)\b",
    ),
}

#: a sentence is a question when it ends with "?" or starts with one of these
_QUESTION_START = re.compile(
    r"^\W*(?:what|wat|wht|which|who|whom|whose|why|how|when|is|are|was|were|does|do|did|can|could|should|"
    r"would|will|has|have|had|explain|tell me|describe|define|list|compare)\b"
)
#: a question is about this study (visual question) when it points at it; otherwise it is a knowledge one
_ABOUT_THE_STUDY = re.compile(
    r"\b(?:this|these|the|that|my)\s+(?:image|images|img|picture|pic|scan|scans|study|studies|series|exam|"
    r"examination|x-?rays?|xray|radiograph|film|ct|mri?|slices?|patient|case|view)\b"
    r"|\bhere\b|\b(?:shown|visible|seen|depicted)\b|\b(?:can|do) you see\b|\b(?:is|are) there\b"
    r"|\bhow many (?:slices|images|frames)\b|\b(?:is|does) it\b|\bthis\b(?=\s*\?)"
)

#: structures the grounding tool knows, by what an instruction may call them; matched in this order, each
#: match taken out of the text, so "left lung" is not also read as "lung"
STRUCTURE_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"\b(?:left|lt|l)\.?\s+lung(?:\s+fields?)?s?\b", ("left lung",)),
    (r"\b(?:right|rt|r)\.?\s+lung(?:\s+fields?)?s?\b", ("right lung",)),
    (
        r"\b(?:both|bilateral|the two)\s+lungs?\b|\blung\s+fields?\b|\blungs?\b|\blugns?\b",
        ("left lung", "right lung"),
    ),
    (r"\b(?:body|patient outline|body outline|body contour|skin)\b", ("body",)),
    (r"\b(?:bones?|skeleton|skeletal|osseous)\b", ("bone",)),
    (r"\b(?:air|gas|free air)\b", ("air",)),
)
#: every structure ``STRUCTURE_PATTERNS`` yields, for the reply when none was named
KNOWN_STRUCTURES = ("body", "left lung", "right lung", "bone", "air")

#: words that make a question a medical one (``*``: any letters); a question without one is not planned
MEDICAL_TERMS: tuple[str, ...] = (
    "*itis", "*oma", "*omas", "*osis", "*emia", "*aemia", "*pathy", "*ectomy", "*plasia", "*megaly",
    "*thorax", "*algia", "*cele", "*rrhage", "*rrhea", "*rrhoea",
    "disease*", "symptom*", "sign", "signs", "treat*", "therap*", "diagnos*", "prognos*", "cause*", "risk*",
    "cancer*", "tumor*", "tumour*", "nodule*", "lesion*", "mass", "masses", "cyst*", "fracture*", "effusion*",
    "pneumon*", "infect*", "inflamm*", "edema", "oedema", "emphysema", "embol*", "stroke*", "bleed*",
    "haemorrhag*", "hemorrhag*", "atelecta*", "consolidation*", "opacit*", "calcif*", "stone*", "metasta*",
    "benign", "malignan*", "biopsy", "patient*", "clinic*", "medic*", "health*", "pain", "fever", "cough*",
    "lung*", "pulmonar*", "heart", "cardi*", "brain", "cerebr*", "liver", "hepat*", "kidney*", "renal",
    "bone*", "spine", "thyroid", "breast*", "abdom*", "chest", "thorac*", "pleura*", "bowel", "colon",
    "pancrea*", "spleen", "bladder", "prostat*", "aort*", "vessel*", "arter*", "vein*", "lymph*", "organ*",
    "anatom*", "tissue*", "cell*", "histolog*", "patholog*",
    "radiolog*", "imaging", "x-ray*", "xray*", "radiograph*", "ct", "mri", "mr", "ultrasound*", "sonograph*",
    "pet", "scan*", "contrast", "dose", "hounsfield", "window*", "modalit*", "dicom",
)  # fmt: skip

#: the built-in rules, tried after the configured ones; every tool of the registry is planned by one
DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "chest-report",
        "when": {"Modality": {"in": ["CT", "CR", "DX"]}, "BodyPartExamined": {"regex": "CHEST|THORAX|LUNG"}},
        "intent": "report",
        "actions": [
            {"API_name": "grounded_segmentation", "API_params": {"prompts": ["left lung", "right lung"]}},
            {"API_name": "report_generation", "API_params": {}},
        ],
        "value": "Measuring both lungs, then writing a report (findings and impression) of what was found; "
        "it will be sent as an SR.",
    },
    {
        "name": "report",
        "intent": "report",
        "actions": [{"API_name": "report_generation", "API_params": {}}],
        "value": "Writing a report (findings and impression) of the results; it will be sent as an SR.",
    },
    {
        "name": "segment-from-boxes",
        "intent": "segment",
        "keywords": ["medsam", "sam", "box prompt*", "from boxes", "from the boxes", "then segment*"],
        "actions": [
            {"API_name": "grounding", "API_params": {"prompts": "$structures"}},
            {"API_name": "segmentation", "API_params": {"boxes": "$0.boxes"}},
        ],
        "value": "Locating $structures, then segmenting inside the boxes found. The result will be sent as a "
        "DICOM SEG, an SR with the volumes and a key image.",
    },
    {
        "name": "segment-structures",
        "intent": "segment",
        "actions": [{"API_name": "grounded_segmentation", "API_params": {"prompts": "$structures"}}],
        "value": "Segmenting $structures. The result will be sent as a DICOM SEG, an SR with the volumes and "
        "a key image.",
    },
    {
        "name": "locate-structures",
        "intent": "locate",
        "actions": [{"API_name": "grounding", "API_params": {"prompts": "$structures"}}],
        "value": "Locating $structures. The boxes will be sent as an SR with their regions and a key image "
        "with the boxes drawn.",
    },
    {
        "name": "image-type",
        "intent": "classify",
        "actions": [{"API_name": "classification", "API_params": {"labels": "$labels"}}],
        "value": "Classifying the image; the result will be sent as an SR.",
    },
    {
        "name": "question-about-the-study",
        "intent": "vqa",
        "actions": [{"API_name": "vqa", "API_params": {"question": "$question"}}],
        "value": "Answering from the study: $question",
    },
    {
        "name": "medical-knowledge",
        "intent": "knowledge",
        "keywords": list(MEDICAL_TERMS),
        "actions": [{"API_name": "retrieval", "API_params": {"question": "$question"}}],
        "value": "Looking the question up in the reference notes: $question",
    },
]

_RULE_KEYS = ("name", "when", "intent", "keywords", "actions", "value", "thoughts")
_CONDITIONS = ("regex", "in", "range", "any_of", "all_of")
_PLACEHOLDER = re.compile(r"\$(structures|labels|question|instruction)\b")
_SAMPLES: dict[str, Any] = {
    "$structures": ["left lung"],
    "$labels": ["normal", "abnormal"],
    "$question": "question",
    "$instruction": "instruction",
}
#: keywords a planner must not see, beyond names, dates, times and identifiers (told by VR and name)
_IDENTIFYING = frozenset(
    {
        "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
        "StationName", "DeviceSerialNumber", "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician",
        "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "MilitaryRank", "BranchOfService",
        "EthnicGroup", "Occupation", "AdditionalPatientHistory", "RequestAttributesSequence",
    }
)  # fmt: skip
_PATIENT_KEYWORDS_ALLOWED = frozenset({"PatientPosition", "PatientOrientation"})


def is_identifying(keyword: str) -> bool:
    """Whether a DICOM keyword may identify a patient (names, dates, IDs, UIDs, places, people)."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag) if tag is not None else ""
    if keyword.startswith(("Patient", "OtherPatient")) and keyword not in _PATIENT_KEYWORDS_ALLOWED:
        return True
    return vr in ("PN", "DA", "DT", "TM") or keyword.endswith(("UID", "ID", "IDs")) or keyword in _IDENTIFYING


def planner_metadata(attributes: Mapping[str, Any]) -> dict[str, str]:
    """The DICOM keywords of ``attributes`` a planner may read, as text (multi-values joined by ``\\``)."""
    metadata = {}
    for keyword, value in attributes.items():
        if value is None or value == "" or tag_for_keyword(keyword) is None or is_identifying(keyword):
            continue
        metadata[keyword] = "\\".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return metadata


@dataclass(frozen=True)
class StudyContext:
    """What a planner may know of a study: no patient identifiers.

    ``metadata`` holds de-identified DICOM keywords (``planner_metadata``) for the rules' ``when``
    conditions; the named fields are its most used keywords and win over it when set.
    """

    modality: str
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    slices: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for keyword in self.metadata:
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"Invalid 'metadata' key {keyword!r} - not a DICOM keyword")
            if is_identifying(keyword):
                raise ValueError(
                    f"Invalid 'metadata' key {keyword!r} - a planner must not see patient identifiers"
                )

    def keywords(self) -> dict[str, str]:
        """``metadata`` with the named fields under their DICOM keywords."""
        merged = dict(self.metadata)
        for keyword, value in (
            ("Modality", self.modality),
            ("BodyPartExamined", self.body_part),
            ("StudyDescription", self.study_description),
            ("SeriesDescription", self.series_description),
        ):
            if value:
                merged[keyword] = value
        return merged


def _normalised(instruction: str) -> str:
    return re.sub(r"\s+", " ", instruction.replace("’", "'").strip().lower())


def structures_named(instruction: str) -> list[str]:
    """The structures the grounding tool knows that ``instruction`` names, in ``KNOWN_STRUCTURES`` words."""
    text = _normalised(instruction)
    found: list[str] = []
    for pattern, names in STRUCTURE_PATTERNS:
        if re.search(pattern, text):
            found.extend(n for n in names if n not in found)
            text = re.sub(pattern, " ", text)
    return found


def _sentences(instruction: str) -> list[str]:
    """The instruction cut after ``? ! ; :``, after a full stop that ends a word, and at line breaks."""
    parts = re.split(r"(?<=[?!;:])\s+|(?<=\D\.)\s+|\n+", instruction.strip())
    return [part.strip() for part in parts if part.strip()]


def _is_question(sentence: str) -> bool:
    text = _normalised(sentence)
    return text.endswith("?") or bool(_QUESTION_START.search(text))


def _first_match(patterns: Sequence[str], text: str) -> int | None:
    positions = [m.start() for p in patterns if (m := re.search(p, text))]
    return min(positions) if positions else None


def detect_intents(instruction: str) -> list[Intent]:
    """The intents ``instruction`` asks for, in the order they are planned.

    Task words decide first; a question sentence without one is a visual question when it points at the
    study ("in this image", "is there") and a knowledge question otherwise. Segmenting includes locating
    (its boxes come with the masks), so "find and segment" is one segment intent.
    """
    text = _normalised(instruction)
    found: dict[Intent, int] = {}
    for intent, patterns in INTENT_PATTERNS.items():
        if (position := _first_match(patterns, text)) is not None:
            found[intent] = position
    for sentence in _sentences(instruction):
        lowered = _normalised(sentence)
        if any(_first_match(patterns, lowered) is not None for patterns in INTENT_PATTERNS.values()):
            continue
        if _is_question(sentence):
            intent = Intent.VQA if _ABOUT_THE_STUDY.search(lowered) else Intent.KNOWLEDGE
            found.setdefault(intent, max(text.find(lowered), 0))
    if Intent.SEGMENT in found:
        found.pop(Intent.LOCATE, None)
    return sorted(found, key=lambda intent: (_INTENT_RANK[intent], found[intent]))


def labels_named(instruction: str) -> list[str]:
    """Candidate labels after "as", "into", "between" or "among" ("classify as normal or pneumonia").

    Fewer than two are none: one candidate is no choice.
    """
    match = re.search(r"\b(?:as|into|between|among|amongst)\s+(.+?)(?=[.?!;]|$)", _normalised(instruction))
    if match is None:
        return []
    parts = re.split(r"\s*(?:,|/|\bor\b|\band\b|\bvs\.?|\bversus\b)\s*", match.group(1))
    labels = [re.sub(r"^(?:a|an|the|either|one of)\s+", "", part).strip() for part in parts]
    labels = list(dict.fromkeys(label for label in labels if label))
    return labels if len(labels) >= 2 else []


@dataclass(frozen=True)
class Request:
    """What an instruction asks, read once: its intents, the structures and labels it names, its question."""

    instruction: str
    text: str
    intents: tuple[Intent, ...]
    structures: tuple[str, ...]
    labels: tuple[str, ...]
    question: str

    @classmethod
    def read(cls, instruction: str) -> Request:
        questions = [s for s in _sentences(instruction) if _is_question(s)]
        return cls(
            instruction=instruction,
            text=_normalised(instruction),
            intents=tuple(detect_intents(instruction)),
            structures=tuple(structures_named(instruction)),
            labels=tuple(labels_named(instruction)),
            question=" ".join(questions) or instruction.strip(),
        )

    def substitutions(self) -> dict[str, Any]:
        return {
            "$structures": list(self.structures),
            "$labels": list(self.labels),
            "$question": self.question,
            "$instruction": self.instruction.strip(),
        }


def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    """A rule keyword as a pattern: whole words, case-insensitive, ``*`` for any letters."""
    words = [re.escape(part) for part in _normalised(keyword).split("*")]
    return re.compile(r"(?<![\w-])" + r"[\w-]*".join(words) + r"(?![\w-])")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Condition:
    """One ``when`` entry: a DICOM keyword and what its value must be."""

    keyword: str
    kind: str  # "equals" or one of _CONDITIONS
    operand: Any

    @classmethod
    def from_entry(cls, keyword: str, spec: Any) -> Condition:
        if isinstance(spec, dict):
            [(kind, operand)] = spec.items()
            return cls(keyword, kind, operand)
        return cls(keyword, "equals", spec)

    def holds(self, metadata: Mapping[str, str]) -> bool:
        value = metadata.get(self.keyword)
        if value is None or value == "":
            return False
        parts = [part.strip() for part in str(value).split("\\")]
        if self.kind == "equals":
            return _same(value, self.operand)
        if self.kind == "regex":
            return re.search(self.operand, value, flags=re.IGNORECASE) is not None
        if self.kind == "in":
            return any(_same(value, option) for option in self.operand)
        if self.kind == "range":
            low, high = self.operand
            numbers = [_number(part) for part in parts]
            return all(
                n is not None and (low is None or n >= low) and (high is None or n <= high) for n in numbers
            )
        wanted = {str(option).strip().casefold() for option in self.operand}
        present = {part.casefold() for part in parts}
        return bool(wanted & present) if self.kind == "any_of" else wanted <= present


def _same(value: Any, expected: Any) -> bool:
    left, right = _number(value), _number(expected)
    if left is not None and right is not None:
        return left == right
    return str(value).strip().casefold() == str(expected).strip().casefold()


@dataclass(frozen=True)
class Rule:
    """A checked rule (``check_rules``), ready to match and expand."""

    name: str
    intents: frozenset[Intent]
    conditions: tuple[Condition, ...]
    keywords: tuple[re.Pattern[str], ...]
    actions: tuple[dict[str, Any], ...]
    value: str
    thoughts: str
    origin: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str) -> Rule:
        intents = data["intent"] if isinstance(data["intent"], list) else [data["intent"]]
        return cls(
            name=data["name"],
            intents=frozenset(Intent.coerce(i) for i in intents),
            conditions=tuple(Condition.from_entry(k, v) for k, v in (data.get("when") or {}).items()),
            keywords=tuple(_keyword_pattern(k) for k in data.get("keywords") or ()),
            actions=tuple(
                {"API_name": a["API_name"], "API_params": dict(a.get("API_params") or {})}
                for a in data["actions"]
            ),
            value=data.get("value") or "",
            thoughts=data.get("thoughts") or "",
            origin=origin,
        )

    def fits(self, metadata: Mapping[str, str]) -> bool:
        """Whether the study meets every ``when`` condition."""
        return all(condition.holds(metadata) for condition in self.conditions)

    def applies(self, text: str, metadata: Mapping[str, str]) -> bool:
        """Whether the study fits and the instruction holds one of the keywords, if there are any."""
        if self.keywords and not any(pattern.search(text) for pattern in self.keywords):
            return False
        return self.fits(metadata)

    def lacks_structures(self, request: Request) -> bool:
        """Whether the rule needs ``$structures`` and the request names none."""
        used = {v for a in self.actions for v in a["API_params"].values() if isinstance(v, str)}
        return "$structures" in used and not request.structures

    def describe(self) -> str:
        return f"Rule '{self.name}'" + ("" if self.origin == "default" else f" ({self.origin})")

    def expand(self, request: Request) -> tuple[Action, ...]:
        """The rule's actions with the request's placeholders filled in; an empty ``$labels`` is left out."""
        values = request.substitutions()
        actions = []
        for action in self.actions:
            params: dict[str, Any] = {}
            for key, value in action["API_params"].items():
                if value == "$labels" and not request.labels:
                    continue
                params[key] = values.get(value, value) if isinstance(value, str) else value
            actions.append(Action(action["API_name"], params))
        return tuple(actions)

    def reply(self, request: Request, tools: Sequence[str]) -> str:
        if not self.value:
            return f"Running {', '.join(tools)}."
        values = {k: ", ".join(v) if isinstance(v, list) else v for k, v in request.substitutions().items()}
        return _PLACEHOLDER.sub(lambda m: values[m.group(0)], self.value)


def _condition_errors(where: str, spec: Any) -> list[str]:
    if isinstance(spec, (str, int, float)) and not isinstance(spec, bool):
        return []
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in _CONDITIONS:
        return [
            f"{where}: {spec!r} must be a value or one of {{'regex': ...}}, {{'in': [...]}}, "
            "{'range': [low, high]}, {'any_of': [...]}, {'all_of': [...]}"
        ]
    [(kind, operand)] = spec.items()
    where = f"{where}.{kind}"
    if kind == "regex":
        if not isinstance(operand, str):
            return [f"{where}: {operand!r} must be a string"]
        try:
            re.compile(operand)
        except re.error as exc:
            return [f"{where}: {operand!r} is not a valid regex: {exc}"]
        return []
    if kind == "range":
        numbers_ok = isinstance(operand, list) and len(operand) == 2
        numbers_ok = numbers_ok and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in operand
        )
        if not numbers_ok:
            return [f"{where}: {operand!r} must be [low, high] (numbers, null for an open end)"]
        if None not in operand and operand[0] > operand[1]:
            return [f"{where}: {operand!r} - the low end must not exceed the high end"]
        return []
    if not isinstance(operand, list) or not operand:
        return [f"{where}: {operand!r} must be a non-empty list"]
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in operand):
        return [f"{where}: {operand!r} must hold only strings or numbers"]
    return []


def _when_errors(where: str, when: Any) -> list[str]:
    if when is None:
        return []
    if not isinstance(when, dict):
        return [f"{where}: {when!r} must be a mapping of DICOM keywords to conditions"]
    errors = []
    for keyword, spec in when.items():
        tag = tag_for_keyword(str(keyword))
        if tag is None:
            errors.append(f"{where}.{keyword}: '{keyword}' is not a DICOM keyword")
        elif dictionary_VR(tag) == "SQ":
            errors.append(f"{where}.{keyword}: '{keyword}' is a sequence and cannot be matched")
        elif is_identifying(str(keyword)):
            errors.append(f"{where}.{keyword}: '{keyword}' may identify a patient; a planner never sees it")
        else:
            errors.extend(_condition_errors(f"{where}.{keyword}", spec))
    return errors


def _intent_errors(where: str, intent: Any) -> list[str]:
    intents = intent if isinstance(intent, list) else [intent]
    if not intents:
        return [f"{where}: must name at least one intent"]
    errors = []
    for item in intents:
        try:
            Intent.coerce(item)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
    return errors


def _action_errors(where: str, actions: Any, has_value: bool) -> list[str]:
    if not isinstance(actions, list):
        return [f"{where}: {actions!r} must be a list of {{API_name, API_params}}"]
    if not actions and not has_value:
        return [f"{where}: an empty list needs a 'value' that tells the user why nothing runs"]
    errors = []
    for index, action in enumerate(actions):
        here = f"{where}[{index}]"
        if not isinstance(action, dict):
            errors.append(f"{here}: {action!r} must be a mapping with API_name and API_params")
            continue
        for key in set(action) - {"API_name", "API_params"}:
            errors.append(f"{here}.{key}: unknown key")
        name = action.get("API_name")
        if not isinstance(name, str) or not name.strip():
            errors.append(f"{here}.API_name: {name!r} must be a non-empty tool name")
        params = action.get("API_params", {})
        if not isinstance(params, dict):
            errors.append(f"{here}.API_params: {params!r} must be a mapping")
            continue
        for key, value in params.items():
            if not isinstance(value, str) or not value.startswith("$"):
                continue
            reference = REFERENCE.match(value)
            if reference is not None and int(reference.group(1)) >= index:
                errors.append(f"{here}.API_params.{key}: {value!r} must name an earlier action of this rule")
            elif reference is None and value not in _SAMPLES:
                errors.append(
                    f"{here}.API_params.{key}: unknown placeholder {value!r} "
                    f"(known: {sorted(_SAMPLES)} and '$N.output' references)"
                )
    return errors


def _rule_errors(where: str, rule: Any) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: {rule!r} must be a mapping"]
    errors = [
        f"{where}.{key}: unknown key (known: {', '.join(_RULE_KEYS)})"
        for key in rule
        if key not in _RULE_KEYS
    ]
    name = rule.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(f"{where}.name: {name!r} must be a non-empty string")
    if "intent" not in rule:
        errors.append(f"{where}.intent: required (one of segment, locate, classify, report, knowledge, vqa)")
    else:
        errors.extend(_intent_errors(f"{where}.intent", rule["intent"]))
    errors.extend(_when_errors(f"{where}.when", rule.get("when")))
    keywords = rule.get("keywords")
    if keywords is not None and (
        not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip("* ") for k in keywords)
    ):
        errors.append(f"{where}.keywords: {keywords!r} must be a list of words")
    for key in ("value", "thoughts"):
        if key in rule and not isinstance(rule[key], str):
            errors.append(f"{where}.{key}: {rule[key]!r} must be a string")
    if "actions" not in rule:
        errors.append(f"{where}.actions: required")
    else:
        errors.extend(_action_errors(f"{where}.actions", rule["actions"], bool(rule.get("value"))))
    return errors


def check_rules(rules: Any, where: str = "planner.rules") -> list[str]:
    """Every problem of a list of rules, each naming its field (``planner.rules[2].when.Modality``).

    Checks the schema only; whether the tools exist and take these parameters is checked when a
    ``RulesPlanner`` is built with a registry.
    """
    if not isinstance(rules, list):
        return [f"{where}: {rules!r} must be a list of rules"]
    errors = []
    names: dict[str, int] = {}
    for index, rule in enumerate(rules):
        errors.extend(_rule_errors(f"{where}[{index}]", rule))
        name = rule.get("name") if isinstance(rule, dict) else None
        if isinstance(name, str):
            if name in names:
                errors.append(f"{where}[{index}].name: '{name}' is used by {where}[{names[name]}] too")
            names.setdefault(name, index)
    return errors


@dataclass(frozen=True)
class _Step:
    intent: Intent
    rule: Rule
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class _Refusal:
    intent: Intent
    reason: str


_INTENT_WORDS = {
    Intent.SEGMENT: "segment {structures}",
    Intent.LOCATE: "locate {structures}",
    Intent.CLASSIFY: "classify the image",
    Intent.REPORT: "write a report",
    Intent.KNOWLEDGE: "answer that question",
    Intent.VQA: "answer that question about the study",
}


def _intent_words(intent: Intent, request: Request) -> str:
    return _INTENT_WORDS[intent].format(structures=", ".join(request.structures) or "that")


class RulesPlanner:
    """Deterministic planning from rules; never raises on odd instructions.

    ``rules`` are the configuration's ``planner.rules``, tried before ``DEFAULT_RULES``; they are checked
    here (schema, tool names, parameters), and a ``ConfigError`` names every bad field.
    """

    name = "rules"

    def __init__(self, registry: ToolRegistry, rules: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.registry = registry
        configured = [dict(rule) for rule in rules or ()]
        errors = check_rules(configured)
        if not errors:
            errors = self._tool_errors(configured)
        if errors:
            raise ConfigError("invalid planner rules:\n  " + "\n  ".join(errors))
        self.rules = [Rule.from_dict(r, f"planner.rules[{i}]") for i, r in enumerate(configured)] + [
            Rule.from_dict(r, "default") for r in DEFAULT_RULES
        ]

    def _tool_errors(self, rules: list[dict[str, Any]]) -> list[str]:
        """Configured rules naming tools this registry lacks, or parameters their schemas refuse.

        Placeholders are checked with sample values (``["left lung"]`` for ``$structures``).
        """
        errors = []
        for index, rule in enumerate(rules):
            unknown = []
            for number, action in enumerate(rule["actions"]):
                try:
                    self.registry.canonical_name(action["API_name"])
                except PlanError as exc:
                    unknown.append(f"planner.rules[{index}].actions[{number}].API_name: {exc}")
            errors.extend(unknown)
            if unknown:
                continue
            actions = tuple(
                Action(
                    a["API_name"],
                    {
                        k: _SAMPLES.get(v, v) if isinstance(v, str) else v
                        for k, v in (a.get("API_params") or {}).items()
                    },
                )
                for a in rule["actions"]
            )
            try:
                self.registry.validate(Plan("", actions, ""))
            except PlanError as exc:
                errors.append(f"planner.rules[{index}]: {exc}")
        return errors

    def _usable(self, tool_name: str, modality: str) -> tuple[bool, str]:
        try:
            tool = self.registry.get(tool_name)
        except PlanError:
            return False, f"{tool_name} is not installed here"
        if modality not in tool.card.modalities:
            return False, f"{tool.card.name} does not work on {modality or 'unknown'} images here"
        ready, reason = tool.readiness()
        return ready, reason

    def _unusable(self, actions: Sequence[Action], modality: str) -> str:
        """Why one of ``actions`` cannot run on this study, or ``""`` when all can."""
        for action in actions:
            usable, reason = self._usable(action.API_name, modality)
            if not usable:
                return reason
        return ""

    def _tools_named(self, text: str) -> list[str]:
        """Tools the instruction names outright ("run intensity_summary"), by name or alias, in order."""
        found: list[tuple[int, str]] = []
        for tool in self.registry.tools():
            for name in (tool.card.name, *tool.card.aliases):
                spoken = name.lower().replace("_", " ")
                for variant in {name.lower(), spoken}:
                    match = re.search(rf"(?<![\w-]){re.escape(variant)}(?![\w-])", text)
                    if match:
                        found.append((match.start(), tool.card.name))
        return list(dict.fromkeys(name for _, name in sorted(found)))

    def _named_action(self, name: str, request: Request, metadata: Mapping[str, str]) -> Action:
        """The named tool with the parameters of the first one-action rule for it that fits, else none."""
        for rule in self.rules:
            if len(rule.actions) != 1 or rule.lacks_structures(request) or not rule.fits(metadata):
                continue
            try:
                same = self.registry.canonical_name(rule.actions[0]["API_name"]) == name
            except PlanError:
                continue
            if same:
                return Action(name, rule.expand(request)[0].API_params)
        return Action(name, {})

    def _plan_named_tools(self, request: Request, names: list[str], study: StudyContext) -> Plan:
        where = f"{study.modality} {study.body_part}".strip()
        for name in names:
            usable, reason = self._usable(name, study.modality)
            if not usable:
                return Plan(
                    thoughts=f"The request names {name}, but {reason}.",
                    actions=(),
                    value=f"I cannot do that here: {reason}.",
                )
        metadata = study.keywords()
        actions = tuple(self._named_action(name, request, metadata) for name in names)
        try:
            return self.registry.validate(
                Plan(
                    thoughts=f"The request names {', '.join(names)} for a {where} study; running it as asked.",
                    actions=actions,
                    value=f"Running {', '.join(names)}.",
                )
            )
        except PlanError as exc:  # the named tool needs parameters the instruction does not give
            return Plan(
                thoughts=f"The request names {', '.join(names)}, but {exc}.",
                actions=(),
                value="I cannot run that as asked: the tool needs parameters the request does not give.",
            )

    def _choose(self, intent: Intent, request: Request, study: StudyContext) -> _Step | _Refusal:
        """The first rule for ``intent`` that applies and whose tools can run here, or why there is none."""
        metadata = study.keywords()
        unusable = ""
        for rule in self.rules:
            if intent not in rule.intents or not rule.applies(request.text, metadata):
                continue
            if rule.lacks_structures(request):
                continue
            actions = rule.expand(request)
            if reason := self._unusable(actions, study.modality):
                unusable = unusable or reason
                continue
            return _Step(intent, rule, actions)
        if unusable:
            return _Refusal(intent, unusable)
        if intent in (Intent.SEGMENT, Intent.LOCATE) and not request.structures:
            return _Refusal(
                intent, f"no structure the tools here know was named (known: {', '.join(KNOWN_STRUCTURES)})"
            )
        if intent is Intent.KNOWLEDGE:
            return _Refusal(
                intent, "it does not read as a medical question, and the tools here answer only those"
            )
        return _Refusal(intent, "no rule here covers it")

    def _keyword_intents(self, request: Request, study: StudyContext) -> tuple[Intent, ...]:
        """The intent of an instruction with no intent word, or none.

        Segment when it names structures; else the first intent of the first rule with keywords that the
        instruction holds ("nodules please" with a configured nodule rule).
        """
        if request.structures:
            return (Intent.SEGMENT,)
        metadata = study.keywords()
        for rule in self.rules:
            if rule.keywords and rule.applies(request.text, metadata):
                return (min(rule.intents, key=lambda intent: _INTENT_RANK[intent]),)
        return ()

    def plan(self, instruction: str, study: StudyContext) -> Plan:
        request = Request.read(instruction)
        if not request.structures and (named := self._tools_named(request.text)):
            return self._plan_named_tools(request, named, study)
        intents = request.intents or self._keyword_intents(request, study)
        if not intents:
            return _clarification(request)
        outcomes = [self._choose(intent, request, study) for intent in intents]
        return self._compose(request, study, outcomes)

    def _compose(self, request: Request, study: StudyContext, outcomes: list[_Step | _Refusal]) -> Plan:
        """One plan of the chosen steps in order, each action once, references renumbered."""
        where = f"{study.modality} {study.body_part}".strip() or "unknown"
        asked = " and ".join(_intent_words(o.intent, request) for o in outcomes)
        thoughts = [f"The request asks to {asked} on a {where} study."]
        replies: list[str] = []
        actions: list[Action] = []
        for outcome in outcomes:
            if isinstance(outcome, _Refusal):
                thoughts.append(
                    f"To {_intent_words(outcome.intent, request)} is not possible: {outcome.reason}."
                )
                replies.append(f"I cannot {_intent_words(outcome.intent, request)} here: {outcome.reason}.")
                continue
            placed: dict[int, int] = {}
            for local, action in enumerate(outcome.actions):
                action = _renumbered(action, placed)
                if action not in actions:
                    actions.append(action)
                placed[local] = actions.index(action)
            tools = [a.API_name for a in outcome.actions]
            thoughts.append(outcome.rule.thoughts or f"{outcome.rule.describe()} plans {', '.join(tools)}.")
            replies.append(outcome.rule.reply(request, tools))
        plan = Plan(" ".join(thoughts), tuple(actions), " ".join(replies))
        try:
            return self.registry.validate(plan)
        except PlanError as exc:
            logger.warning("rules planner: the plan does not validate: %s", exc)
            return Plan(
                thoughts=f"{plan.thoughts} The plan does not validate: {exc}.",
                actions=(),
                value=f"I cannot run that as planned: {exc}.",
            )


def _renumbered(action: Action, placed: Mapping[int, int]) -> Action:
    """``action`` with references to a rule's own actions turned into references into the whole plan."""
    params = {}
    for key, value in action.API_params.items():
        if isinstance(value, str) and (match := REFERENCE.match(value)):
            value = f"${placed[int(match.group(1))]}.{match.group(2)}"
        params[key] = value
    return Action(action.API_name, params)


def _clarification(request: Request) -> Plan:
    said = request.instruction.strip()
    return Plan(
        thoughts=f"The request '{said}' asks for nothing the tools here do."
        if said
        else "The request is empty.",
        actions=(),
        value=(
            "I am not sure what you would like me to do, so I have run nothing. I can segment or locate "
            f"{', '.join(KNOWN_STRUCTURES)}; classify the image; write a report; answer a question about "
            "this study; or look up a medical question. Please say which, for example 'Segment both lungs'."
        ),
    )
