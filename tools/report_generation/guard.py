"""The fact guard: a language model's rewrite of the template report is kept only if it adds nothing.

A small language model rewrites fluently and invents freely (a nodule, a size, "otherwise normal"). The
rewrite is checked against the template it was made from, which states only what the tools returned:

* every number in the rewrite must be one of the template's (``2,345.60`` and ``2345.6`` are the same);
* every number of the template must still be there (a dropped measurement is a changed report);
* no finding, anatomy, assessment, laterality or count word of ``VOCABULARY`` may appear in the rewrite
  unless the template has the same concept (``tumour`` and ``tumor`` are one concept);
* the ``FINDINGS:`` / ``IMPRESSION:`` headings stay as they are (the SR encoder splits the text on them).

What it does not catch: a negation turned around with words the template already has ("not found" to
"found"), or a sentence moved from one structure to another. The template stays the reference report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: concept -> regular expressions of its spellings (matched as whole words, case-insensitive)
VOCABULARY: dict[str, tuple[str, ...]] = {
    # findings
    "nodule": (r"nodules?", r"nodular(?:ity)?"),
    "mass": (r"mass(?:es)?",),
    "lesion": (r"lesions?",),
    "tumour": (r"tumou?rs?", r"neoplasms?", r"neoplastic"),
    "cancer": (r"cancers?", r"carcinomas?", r"malignan(?:cy|cies|t)"),
    "metastasis": (r"metastas[ie]s", r"metastatic"),
    "effusion": (r"effusions?",),
    "pneumothorax": (r"pneumothora(?:x|ces)",),
    "consolidation": (r"consolidat(?:ion|ions|ed)",),
    "opacity": (r"opacit(?:y|ies)", r"opacification", r"opaque"),
    "ground glass": (r"ground[- ]glass",),
    "infiltrate": (r"infiltrat(?:e|es|ion)",),
    "atelectasis": (r"atelecta(?:sis|tic)",),
    "collapse": (r"collapsed?",),
    "emphysema": (r"emphysema(?:tous)?",),
    "fibrosis": (r"fibro(?:sis|tic)",),
    "pneumonia": (r"pneumonias?",),
    "infection": (r"infect(?:ion|ions|ed|ious)",),
    "inflammation": (r"inflammat(?:ion|ory)",),
    "edema": (r"o?edema(?:tous)?",),
    "hemorrhage": (r"ha?emorrhag(?:e|es|ic)", r"bleed(?:ing)?", r"haematomas?", r"hematomas?"),
    "fracture": (r"fractur(?:e|es|ed)",),
    "cardiomegaly": (r"cardiomegaly",),
    "enlargement": (r"enlarge(?:d|ment)", r"hypertroph(?:y|ic)", r"dilat(?:ed|ation|ion)"),
    "cyst": (r"cysts?", r"cystic"),
    "calcification": (r"calcif(?:ication|ications|ied)",),
    "stenosis": (r"stenos[ie]s", r"stenotic", r"narrowing"),
    "aneurysm": (r"aneurysms?", r"aneurysmal"),
    "embolism": (r"embol(?:ism|isms|us|i)",),
    "thrombus": (r"thromb(?:us|i|osis)",),
    "abscess": (r"abscess(?:es)?",),
    "obstruction": (r"obstruct(?:ion|ed|ive)",),
    "hernia": (r"hernias?", r"herniation"),
    "lymphadenopathy": (r"(?:lymph)?adenopath(?:y|ies)",),
    "granuloma": (r"granulomas?", r"granulomatous"),
    "scar": (r"scar(?:s|ring)?",),
    "cavity": (r"cavit(?:y|ies|ation|ary)",),
    "pneumoperitoneum": (r"pneumoperitoneum", r"free air"),
    "ascites": (r"ascites",),
    "stone": (r"stones?", r"calculus", r"calculi"),
    # assessments a report must not add
    "normal": (r"normal", r"unremarkable", r"healthy", r"intact", r"within normal limits"),
    "abnormal": (r"abnormal(?:ity|ities)?", r"patholog(?:y|ical|ic)", r"disease[sd]?"),
    "benign": (r"benign",),
    "suspicious": (r"suspicious", r"concerning", r"worrisome"),
    "severity": (
        r"mild(?:ly)?",
        r"moderate(?:ly)?",
        r"severe(?:ly)?",
        r"marked(?:ly)?",
        r"significant(?:ly)?",
    ),
    "acuity": (r"acute", r"chronic", r"subacute"),
    "change": (r"new", r"increas(?:e|ed|ing)", r"decreas(?:e|ed|ing)", r"stable", r"unchanged", r"interval"),
    # anatomy
    "lung": (r"lungs?", r"pulmonary"),
    "lobe": (r"lobes?", r"lobar"),
    "airway": (r"airways?", r"trachea", r"tracheal", r"bronch(?:us|i|ial)"),
    "pleura": (r"pleura", r"pleural"),
    "heart": (r"hearts?", r"cardiac", r"pericardi(?:um|al)"),
    "mediastinum": (r"mediastin(?:um|al)", r"hil(?:um|a|ar)"),
    "aorta": (r"aort(?:a|ic)",),
    "chest": (r"chest", r"thora(?:x|cic)"),
    "abdomen": (r"abdom(?:en|inal)", r"pelvi(?:s|c)"),
    "head": (r"head", r"brain", r"cerebr(?:al|um)", r"skull", r"intracranial"),
    "liver": (r"liver", r"hepatic"),
    "gallbladder": (r"gall ?bladder", r"biliary"),
    "spleen": (r"spleen", r"splenic"),
    "pancreas": (r"pancrea(?:s|tic)",),
    "kidney": (r"kidneys?", r"renal"),
    "adrenal": (r"adrenals?",),
    "bladder": (r"(?:urinary )?bladder",),
    "bowel": (r"bowel", r"intestin(?:e|al)", r"colon(?:ic)?", r"stomach", r"gastric"),
    "esophagus": (r"o?esophag(?:us|eal)",),
    "bone": (r"bones?", r"osseous", r"skelet(?:on|al)", r"ribs?", r"spine", r"spinal", r"vertebra[el]?"),
    "breast": (r"breasts?",),
    "thyroid": (r"thyroid",),
    "lymph node": (r"lymph nodes?", r"nodes?"),
    "vessel": (r"vessels?", r"vascular", r"arter(?:y|ies|ial)", r"veins?", r"venous"),
    # laterality and counts: a finding moved to the other side, or multiplied, is a new finding
    "left": (r"left",),
    "right": (r"right",),
    "bilateral": (r"bilateral(?:ly)?", r"both"),
    "count": (
        r"two",
        r"three",
        r"four",
        r"five",
        r"six",
        r"seven",
        r"eight",
        r"nine",
        r"ten",
        r"single",
        r"multiple",
        r"several",
        r"numerous",
        r"few",
        r"many",
        r"dozens?",
        r"hundreds?",
        r"thousands?",
    ),
}

_CONCEPTS = {
    concept: re.compile(r"\b(?:" + "|".join(spellings) + r")\b", re.IGNORECASE)
    for concept, spellings in VOCABULARY.items()
}
#: a number not glued to a word before it ("mm2", "T1" and "SmolLM2" are names, not values)
_NUMBER = re.compile(r"(?<![A-Za-z\d.])-?\d+(?:,\d{3})*(?:\.\d+)?")

#: the section headings ``dicom_node.encode.sr.report_sections`` splits a report on
_HEADING = re.compile(r"^[ \t]*(findings?|impressions?)[ \t]*:", re.IGNORECASE | re.MULTILINE)

ADDS_NUMBER = "adds a number"
DROPS_NUMBER = "leaves out a number"
ADDS_TERM = "adds a finding, anatomy or assessment term"
EMPTY = "leaves a section empty"
CHANGES_SECTIONS = "changes the FINDINGS/IMPRESSION sections"


@dataclass(frozen=True)
class Verdict:
    """Whether a rewrite may replace the template; ``rule`` names what it broke, ``detail`` the words."""

    accepted: bool
    rule: str = ""
    detail: str = ""

    @property
    def reason(self) -> str:
        return f"{self.rule}: {self.detail}" if self.detail else self.rule or "faithful to the template"


def numbers(text: str) -> set[str]:
    """The numbers in ``text`` in one spelling: no thousands commas, no trailing zeros (``2345.6``)."""
    found = set()
    for match in _NUMBER.finditer(text):
        value = match.group().replace(",", "")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        found.add("0" if value in ("-0", "") else value)
    return found


def concepts(text: str) -> set[str]:
    """The ``VOCABULARY`` concepts that ``text`` names."""
    return {concept for concept, pattern in _CONCEPTS.items() if pattern.search(text)}


def headings(text: str) -> list[str]:
    """The section headings of ``text`` in order, as ``findings`` or ``impression``."""
    return [
        "impression" if h.lower().startswith("impression") else "findings" for h in _HEADING.findall(text)
    ]


def empty_sections(text: str) -> list[str]:
    """The sections of ``text`` with nothing under their heading (all of it when it is blank)."""
    bodies = _HEADING.split(text)
    if not text.strip():
        return ["the text"]
    # split() gives [preamble, heading, body, heading, body, ...]
    return [
        f"the {heading.lower()} section"
        for heading, body in zip(bodies[1::2], bodies[2::2], strict=True)
        if not body.strip()
    ]


def check_rewrite(template: str, rewrite: str) -> Verdict:
    """Accept ``rewrite`` only if it keeps the template's sections and every number of it, and states no
    number or vocabulary concept the template lacks."""
    empty = empty_sections(rewrite)
    if empty:
        return Verdict(False, EMPTY, ", ".join(empty))
    if headings(rewrite) != headings(template):
        return Verdict(False, CHANGES_SECTIONS, " then ".join(headings(rewrite)) or "no headings")
    template_numbers, rewrite_numbers = numbers(template), numbers(rewrite)
    added = sorted(rewrite_numbers - template_numbers)
    if added:
        return Verdict(False, ADDS_NUMBER, ", ".join(added))
    dropped = sorted(template_numbers - rewrite_numbers)
    if dropped:
        return Verdict(False, DROPS_NUMBER, ", ".join(dropped))
    new_terms = sorted(concepts(rewrite) - concepts(template))
    if new_terms:
        return Verdict(False, ADDS_TERM, ", ".join(f"'{term}'" for term in new_terms))
    return Verdict(True)
