"""The ``Study facts`` engine: answers a question only from the study's header and the job's tool results.

It knows four kinds of question, tried in this order:

* sizes ("How large is the left lung?"): the volumes and areas a tool measured, with their units;
* the header ("What modality is this?", "Which body part?", "Is this an MRI?", view, side, slice
  thickness, scanner, descriptions);
* a summary ("What was found?"): the findings of the structured report template;
* presence ("Is there a nodule?"): only what a tool reported for that name, a classification's
  probability being a model's estimate, not a diagnosis.

Anything else, or a question about something no tool looked at, gets ``CANNOT_ANSWER`` and why. It never
infers: a structure no tool looked for is neither present nor absent to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tools.report_generation import template

ENGINE_NAME = "Study facts"
ENGINE_VERSION = "1.0"
CANNOT_ANSWER = "I cannot answer this from the study's data and tool results."

_SIZE = re.compile(r"\b(?:how (?:large|big|small|much)|size|volume|area|measure\w*|dimensions?)\b")
_PRESENCE = re.compile(
    r"\b(?:is there|are there|any|does (?:it|this|the \w+) show|do you see|can you see|visible|present|"
    r"found|detected|seen)\b"
)
_SUMMARY = re.compile(
    r"\b(?:what (?:was|were|did|does|do)\b.*\b(?:found|find|show)|findings|summar\w*|results?)\b"
)
_PRESENCE_TARGET = re.compile(
    r"\b(?:is|are) there (?:an? |any |some )?(?P<target>[\w\s-]+?)(?: in | on | at |\?|$)"
)
_SIDES = ("left", "right")

#: (header keyword, what a question asking for it says, how the answer names it)
_HEADER_QUESTIONS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    (
        "Modality",
        re.compile(
            r"\b(?:modality|(?:kind|type) of (?:scan|image|imaging|study)|imaging technique|what scan)\b"
        ),
        "modality",
    ),
    (
        "BodyPartExamined",
        re.compile(r"\b(?:body part|part of the body|region|which part|what part)\b"),
        "body part examined",
    ),
    ("ViewPosition", re.compile(r"\b(?:view|projection)\b"), "view position"),
    ("Laterality", re.compile(r"\b(?:laterality|which side)\b"), "laterality"),
    ("SliceThickness", re.compile(r"\bslice thickness\b|\bhow thick\b"), "slice thickness"),
    ("Manufacturer", re.compile(r"\b(?:manufacturer|vendor|scanner|machine)\b"), "manufacturer"),
    ("StudyDescription", re.compile(r"\bstudy description\b|\bwhat study\b"), "study description"),
    ("SeriesDescription", re.compile(r"\bseries description\b|\bwhat series\b"), "series description"),
)
_UNITS = {"SliceThickness": " mm"}
#: modality code -> words a question may use for it
MODALITY_WORDS: dict[str, tuple[str, ...]] = {
    "CT": ("ct", "computed tomography", "cat scan"),
    "MR": ("mr", "mri", "magnetic resonance"),
    "CR": ("x-ray", "xray", "radiograph", "cr"),
    "DX": ("x-ray", "xray", "radiograph", "dx"),
    "US": ("ultrasound", "sonography", "us"),
    "PT": ("pet",),
    "NM": ("nuclear medicine", "scintigraphy", "nm"),
    "MG": ("mammogram", "mammography", "mg"),
    "XA": ("angiogram", "angiography", "xa"),
    "SM": ("slide", "histology", "microscopy", "sm"),
}
MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "CR": "computed radiography",
    "DX": "digital radiography",
    "US": "ultrasound",
    "PT": "positron emission tomography",
    "NM": "nuclear medicine",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "SM": "slide microscopy",
}


def answer(
    question: str,
    metadata: Mapping[str, str],
    prior_results: Sequence[Mapping[str, Any]],
    modality: str = "",
    body_part: str = "",
) -> str:
    """The answer to ``question``, or ``CANNOT_ANSWER`` with the reason."""
    text = " ".join(question.lower().split())
    header = {keyword: str(value) for keyword, value in metadata.items()}
    header["Modality"] = header.get("Modality") or modality
    header["BodyPartExamined"] = header.get("BodyPartExamined") or body_part
    results = [r for r in prior_results if str(r.get("tool", "")) not in template.SKIPPED_TOOLS]
    for responder in (_size_answer, _header_answer, _summary_answer, _presence_answer):
        reply = responder(text, header, results)
        if reply:
            return reply
    return CANNOT_ANSWER


def _size_answer(text: str, header: Mapping[str, str], results: Sequence[Mapping[str, Any]]) -> str:
    """The measurements of the structures the question names, each with its tool."""
    if not _SIZE.search(text):
        return ""
    measured = []
    unmeasured = []
    for result in results:
        source = template.source_name(result)
        measurements = [
            m for m in result.get("measurements") or [] if mentions(text, str(m.get("label", "")))
        ]
        for measurement in measurements:
            label = template.capitalised(str(measurement["label"]))
            measured.append(f"{label}: {template.measurement_text(measurement)} ({source}).")
        names = {str(m.get("label")) for m in measurements}
        for label in [*(result.get("structures") or {}), *(result.get("boxes") or {})]:
            if label not in names and mentions(text, label):
                unmeasured.append(label)
    if measured:
        return " ".join(dict.fromkeys(measured))
    if unmeasured:
        listed = ", ".join(dict.fromkeys(unmeasured))
        return f"{CANNOT_ANSWER} A tool found the {listed} but none measured it."
    return f"{CANNOT_ANSWER} No tool measured what the question names."


def _header_answer(text: str, header: Mapping[str, str], results: Sequence[Mapping[str, Any]]) -> str:
    """A header field the question asks for, or a yes/no on the modality it names."""
    modality = header.get("Modality", "").strip().upper()
    asked = [keyword for keyword, pattern, _ in _HEADER_QUESTIONS if pattern.search(text)]
    named = named_modalities(text)
    if not asked and named and re.match(r"(?:is|was) (?:this|it|the \w+) ", text):
        if not modality:
            return f"{CANNOT_ANSWER} The header does not give the modality."
        yes = modality in named
        return f"{'Yes' if yes else 'No'}: the modality is {modality_text(modality)}."
    sentences = []
    for keyword, _, name in _HEADER_QUESTIONS:
        if keyword not in asked:
            continue
        value = header.get(keyword, "").strip()
        if not value:
            sentences.append(f"{CANNOT_ANSWER} The header does not give the {name}.")
        elif keyword == "Modality":
            sentences.append(f"The modality is {modality_text(value)}.")
        else:
            sentences.append(f"The {name} is {value}{_UNITS.get(keyword, '')}.")
    return " ".join(sentences)


def _presence_answer(text: str, header: Mapping[str, str], results: Sequence[Mapping[str, Any]]) -> str:
    """What the tools reported for the names the question asks about; nothing is inferred."""
    if not _PRESENCE.search(text):
        return ""
    statements = []
    for result in results:
        source = template.source_name(result)
        structures: Mapping[str, int] = result.get("structures") or {}
        boxes: Mapping[str, int] = result.get("boxes") or {}
        for label in dict.fromkeys([*structures, *boxes]):
            if not mentions(text, label):
                continue
            if structures.get(label, 0) > 0 or boxes.get(label, 0) > 0:
                statements.append(f"Yes: the {label} was found ({source}).")
            else:
                statements.append(f"No: the {label} was looked for and not found ({source}).")
        for label, probability in template.ranked_labels(result):
            if mentions(text, label):
                statements.append(
                    f"The classification gives '{label}' a probability of {probability:.2f} ({source}); "
                    "this is a model's estimate, not a diagnosis."
                )
    if statements:
        return " ".join(dict.fromkeys(statements))
    target = _PRESENCE_TARGET.search(text)
    what = f"for '{target.group('target').strip()}'" if target else "for it"
    return f"{CANNOT_ANSWER} No tool looked {what}."


def _summary_answer(text: str, header: Mapping[str, str], results: Sequence[Mapping[str, Any]]) -> str:
    """The template's findings, when the question asks what was found."""
    if not _SUMMARY.search(text):
        return ""
    report = template.build_report(results, header)
    if not report.has_results:
        return f"{CANNOT_ANSWER} No tool has reported on this study."
    return " ".join(report.findings)


def mentions(text: str, label: str) -> bool:
    """Whether ``text`` names ``label``: every word of it (plurals too), with a matching side.

    "the lungs" names "left lung" and "right lung"; "the left lung" names only the first.
    """
    words = label.lower().split()
    core = [w for w in words if w not in _SIDES]
    if not core:
        return False
    if not all(re.search(rf"\b{re.escape(word)}(?:s|es)?\b", text) for word in core):
        return False
    sides_asked = [side for side in _SIDES if re.search(rf"\b{side}\b", text)]
    sides_of_label = [side for side in _SIDES if side in words]
    return not sides_asked or not sides_of_label or any(side in sides_asked for side in sides_of_label)


def named_modalities(text: str) -> set[str]:
    """The modality codes whose words appear in ``text``."""
    return {code for code, words in MODALITY_WORDS.items() if _any_word(text, words)}


def modality_text(code: str) -> str:
    name = MODALITY_NAMES.get(code.upper())
    return f"{code} ({name})" if name else code


def _any_word(text: str, words: Iterable[str]) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in words)
