"""The structured report template: FINDINGS and IMPRESSION built only from a study's structured results.

The input is the study's de-identified metadata and the ``ToolResult.summary()`` dicts of the earlier
actions of the job. Every sentence restates one of them: measurements (volumes in mL, areas in mm2,
one decimal), structures found or not found, box counts, classification probabilities, and tools that
failed or were unavailable (named as not assessed). Nothing else is said, so the template cannot invent
a finding. Free text of other tools (answers, retrieved passages) is left out: it is not a measurement of
this study and is encoded in its own SR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENGINE_NAME = "Structured report template"
ENGINE_VERSION = "1.0"

FINDINGS_HEADING = "FINDINGS:"
IMPRESSION_HEADING = "IMPRESSION:"
NOTHING_TO_REPORT = "Nothing to report: no tool result is available for this study."
#: classification labels listed in the findings, most probable first
TOP_LABELS = 3
#: earlier results a report does not restate: its own earlier reports
SKIPPED_TOOLS = frozenset({"report_generation"})

_VOLUME_TO_ML = {"ml": 1.0, "cm3": 1.0, "mm3": 0.001, "l": 1000.0}
_AREA_TO_MM2 = {"mm2": 1.0, "cm2": 100.0}
_UNIT_NAMES = {"[hnsf'u]": "HU", "hu": "HU", "mm": "mm", "cm": "cm", "%": "%", "1": ""}
_EXAMINATION_FIELDS = (
    ("StudyDescription", "study"),
    ("SeriesDescription", "series"),
    ("ViewPosition", "view"),
    ("Laterality", "laterality"),
)


@dataclass(frozen=True)
class Report:
    """A report as its two sections, each a list of sentences (one per line in the text)."""

    findings: tuple[str, ...]
    impression: tuple[str, ...]
    #: whether any tool result was reported (False: the report says there is nothing to report)
    has_results: bool

    @property
    def text(self) -> str:
        """``FINDINGS:`` and ``IMPRESSION:`` sections, the headings ``dicom_node.encode.sr`` splits on."""
        return (
            section_text(FINDINGS_HEADING, self.findings)
            + "\n\n"
            + section_text(IMPRESSION_HEADING, self.impression)
        )


def section_text(heading: str, sentences: Sequence[str]) -> str:
    return heading + "\n" + "\n".join(sentences)


def build_report(
    prior_results: Sequence[Mapping[str, Any]],
    metadata: Mapping[str, str],
    modality: str = "",
    body_part: str = "",
) -> Report:
    """The report of a study from its metadata and the summaries of the job's earlier results."""
    results = [r for r in prior_results if str(r.get("tool", "")) not in SKIPPED_TOOLS]
    findings: list[str] = []
    examination = examination_sentence(metadata, modality, body_part)
    if examination:
        findings.append(examination)
    for result in results:
        findings.extend(result_findings(result))
    impression = impression_sentences(results)
    if not results:
        findings.append(NOTHING_TO_REPORT)
        impression = [NOTHING_TO_REPORT]
    return Report(tuple(findings), tuple(impression), has_results=bool(results))


def examination_sentence(metadata: Mapping[str, str], modality: str, body_part: str) -> str:
    """What was imaged, from the de-identified header: modality, body part, descriptions, slice thickness."""
    modality = str(metadata.get("Modality") or modality).strip()
    body_part = str(metadata.get("BodyPartExamined") or body_part).strip()
    parts = []
    if modality or body_part:
        parts.append(" of the ".join(p for p in (modality, body_part) if p))
    for keyword, name in _EXAMINATION_FIELDS:
        value = str(metadata.get(keyword, "")).strip()
        if value:
            parts.append(f'{name} "{value}"')
    thickness = str(metadata.get("SliceThickness", "")).strip()
    if thickness:
        parts.append(f"slice thickness {thickness} mm")
    return f"Examination: {'; '.join(parts)}." if parts else ""


def source_name(result: Mapping[str, Any]) -> str:
    """``tool, engine``: how a sentence names, in parentheses, the result it restates."""
    tool = str(result.get("tool") or "a tool").replace("_", " ")
    engine = str(result.get("engine") or "").strip()
    return f"{tool}, {engine}" if engine else tool


def subject_name(result: Mapping[str, Any]) -> str:
    """``tool (engine)``: how a sentence names the tool as its subject."""
    tool = str(result.get("tool") or "a tool").replace("_", " ")
    engine = str(result.get("engine") or "").strip()
    return f"{tool} ({engine})" if engine else tool


def result_findings(result: Mapping[str, Any]) -> list[str]:
    """The findings sentences of one result; a failed or unavailable tool is named as not assessed."""
    source, subject = source_name(result), subject_name(result)
    status = str(result.get("status", "ok"))
    sentences = structure_sentences(result, source) + classification_sentences(result, subject)
    if status != "ok":
        error = sentence(str(result.get("error") or "no reason given"))
        what = "was unavailable" if status == "unavailable" else "did not complete"
        sentences.append(f"Not assessed: {subject} {what}: {error}")
    elif not sentences:
        sentences.append(f"{capitalised(subject)}: nothing found.")
    return sentences


def structure_sentences(result: Mapping[str, Any], source: str) -> list[str]:
    """One sentence per structure: its measurements, else found (with box count) or not found."""
    measurements = _measurements_by_label(result)
    structures: Mapping[str, int] = result.get("structures") or {}
    boxes: Mapping[str, int] = result.get("boxes") or {}
    sentences = []
    for label in dict.fromkeys([*measurements, *structures, *boxes]):
        if label in measurements:
            values = ", ".join(measurement_text(m) for m in measurements[label])
            sentences.append(f"{capitalised(label)}: {values} ({source}).")
        elif structures.get(label, 0) > 0 or boxes.get(label, 0) > 0:
            count = int(boxes.get(label, 0))
            where = f" in {count} box{'es' if count != 1 else ''}" if count else ""
            sentences.append(f"{capitalised(label)}: found{where} ({source}).")
        else:
            sentences.append(f"{capitalised(label)}: not found ({source}).")
    return sentences


def classification_sentences(result: Mapping[str, Any], subject: str) -> list[str]:
    """The most probable classification labels with their probabilities."""
    ranked = ranked_labels(result)
    if not ranked:
        return []
    listed = ", ".join(
        f"{label} (probability {probability:.2f})" for label, probability in ranked[:TOP_LABELS]
    )
    of = f", the {TOP_LABELS} most probable of {len(ranked)} labels" if len(ranked) > TOP_LABELS else ""
    return [f"{capitalised(subject)}{of}: {listed}."]


def impression_sentences(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The short summary: volumes and areas, structures found and not found, top classes, not assessed."""
    volumes: list[str] = []
    areas: list[str] = []
    found: list[str] = []
    not_found: list[str] = []
    classes: list[str] = []
    nothing: list[str] = []
    not_assessed: list[str] = []
    for result in results:
        source, subject = source_name(result), subject_name(result)
        measurements = _measurements_by_label(result)
        for label, items in measurements.items():
            for item in items:
                value, unit = display_value(item)
                if unit == "mL":
                    volumes.append(f"{label} {value} mL")
                elif unit == "mm2":
                    areas.append(f"{label} {value} mm2")
        structures: Mapping[str, int] = result.get("structures") or {}
        boxes: Mapping[str, int] = result.get("boxes") or {}
        for label in dict.fromkeys([*structures, *boxes]):
            if label in measurements:
                continue
            if structures.get(label, 0) > 0 or boxes.get(label, 0) > 0:
                found.append(label)
            else:
                not_found.append(label)
        ranked = ranked_labels(result)
        if ranked:
            classes.append(f"{ranked[0][0]}, probability {ranked[0][1]:.2f} ({source})")
        status = str(result.get("status", "ok"))
        if status != "ok":
            not_assessed.append(f"{subject}, {'unavailable' if status == 'unavailable' else 'failed'}")
        elif not (measurements or structures or boxes or ranked):
            nothing.append(subject)
    sentences = []
    for title, items in (
        ("Volumes", volumes),
        ("Areas", areas),
        ("Found", found),
        ("Not found", not_found),
        ("Most probable class", classes),
        ("Nothing found by", nothing),
        ("Not assessed", not_assessed),
    ):
        if items:
            sentences.append(f"{title}: {'; '.join(dict.fromkeys(items))}.")
    return sentences


def display_value(measurement: Mapping[str, Any]) -> tuple[str, str]:
    """``(value, unit)`` as the report writes them: volumes in mL and areas in mm2, one decimal."""
    value = float(measurement["value"])
    unit = str(measurement.get("unit", "")).strip()
    key = unit.lower()
    if key in _VOLUME_TO_ML:
        return f"{value * _VOLUME_TO_ML[key]:.1f}", "mL"
    if key in _AREA_TO_MM2:
        return f"{value * _AREA_TO_MM2[key]:.1f}", "mm2"
    return f"{value:.1f}", _UNIT_NAMES.get(key, unit)


def measurement_text(measurement: Mapping[str, Any]) -> str:
    """``volume 2345.6 mL``: the measurement's name in lower case, value and unit."""
    value, unit = display_value(measurement)
    name = str(measurement.get("name") or "value").strip().lower()
    return f"{name} {value} {unit}".strip()


def ranked_labels(result: Mapping[str, Any]) -> list[tuple[str, float]]:
    labels: Mapping[str, float] = result.get("labels") or {}
    return sorted(((str(k), float(v)) for k, v in labels.items()), key=lambda item: -item[1])


def _measurements_by_label(result: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for measurement in result.get("measurements") or []:
        grouped.setdefault(str(measurement.get("label", "")), []).append(measurement)
    return grouped


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(text: str) -> str:
    """``text`` ending in a full stop (an error message may lack one)."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
