"""The answer to the user's question from what the tools returned: MMedAgent's second round.

MMedAgent sends the tools' outputs back to the planner as ``"<tool> output: …"`` followed by ``"Answer my
first question: <question>"`` and lets it answer (``second_round_prompt`` writes that text). A language
model may state a number no tool returned, so here the answer is written from a template over the
results (``ToolResult.summary()`` dicts), and a model's answer (``generate``) is used only when every number
in it is one the tools or the question gave; otherwise the template answer is kept and the note says why.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_core.protocol import Plan

logger = logging.getLogger(__name__)

#: a number as written in text: not part of a word or of a longer number; a minus sign only before it
_NUMBER = re.compile(r"(?:(?<=[\s(\[:=/])|^)-?\d+(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PERCENT = re.compile(r"\s*(?:%|percent\b)")
#: how UCUM units read in a sentence
_UNITS = {"[hnsf'U]": "HU", "mm2": "mm²", "cm2": "cm²", "mm3": "mm³", "cm3": "cm³", "1": "", "{ratio}": ""}
TEMPLATE = "template"
LLM = "llm"


@dataclass(frozen=True)
class Answer:
    """An answer, which engine wrote it, and why a model's answer was not used (``note``).

    ``rejected`` holds the numbers a model stated that no tool returned, for logs; ``str()`` never shows
    them, so the returned text states no number the tools did not give.
    """

    text: str
    engine: str = TEMPLATE
    note: str = ""
    rejected: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.text}\n\nNote: {self.note}" if self.note else self.text


def _tool_name(plan: Plan, index: int, result: Mapping[str, Any]) -> str:
    if result.get("tool"):
        return str(result["tool"])
    return plan.actions[index].API_name if index < len(plan.actions) else f"action {index}"


def format_number(value: float) -> str:
    """``value`` rounded for reading: fewer decimals as it grows; always a rounding of ``value`` itself."""
    size = abs(value)
    decimals = 0 if size >= 1000 else 1 if size >= 10 else 2 if size >= 0.1 or size == 0 else 4
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _measurement_lines(measurements: Sequence[Mapping[str, Any]]) -> list[str]:
    by_label: dict[str, list[str]] = {}
    for item in measurements:
        unit = _UNITS.get(str(item.get("unit", "")), str(item.get("unit", "")))
        value = item.get("value")
        number = format_number(float(value)) if isinstance(value, (int, float)) else str(value)
        by_label.setdefault(str(item.get("label", "")), []).append(
            f"{str(item.get('name', '')).lower()} {number}{(' ' + unit) if unit else ''}".strip()
        )
    return [f"{label.capitalize() or 'Result'}: {', '.join(values)}." for label, values in by_label.items()]


def _facts(tool: str, result: Mapping[str, Any]) -> list[str]:
    """Sentences for one tool result; every number in them is one of the result's, rounded."""
    status = str(result.get("status", "ok"))
    if status != "ok":
        return [f"{tool} could not run ({status}): {result.get('error') or 'no reason given'}."]
    lines = _measurement_lines(result.get("measurements") or [])
    measured = {str(m.get("label", "")) for m in result.get("measurements") or []}
    structures: Mapping[str, Any] = result.get("structures") or {}
    for label, voxels in structures.items():
        if not voxels:
            lines.append(f"{label.capitalize()} was not found.")
        elif label not in measured:
            lines.append(f"{label.capitalize()} was outlined.")
    for label, count in (result.get("boxes") or {}).items():
        if label not in structures and count:
            lines.append(f"{label.capitalize()} was located on {count} slice{'s' if count != 1 else ''}.")
    labels: Mapping[str, Any] = result.get("labels") or {}
    if labels:
        ranked = sorted(labels.items(), key=lambda item: -float(item[1]))[:3]
        lines.append(
            "Most likely: "
            + "; ".join(f"{name} (probability {format_number(float(p))})" for name, p in ranked)
            + "."
        )
    if result.get("text"):
        lines.append(str(result["text"]).strip())
    elif result.get("sources"):
        lines += [
            f"Source: {s.get('source', '')} - {s.get('heading', '')}".strip() for s in result["sources"]
        ]
    return lines or [f"{tool} ran and returned nothing to report."]


def _tool_output(result: Mapping[str, Any]) -> str:
    """One result as MMedAgent's tool output line: its facts on one line."""
    return " ".join(line.replace("\n", " ") for line in _facts("", result)).strip()


def second_round_prompt(question: str, plan: Plan, results: Sequence[Mapping[str, Any]]) -> str:
    """MMedAgent's second-round user turn: each tool's output, then ``Answer my first question: …``."""
    outputs = [
        f"{_tool_name(plan, i, result)} output: {_tool_output(result)}" for i, result in enumerate(results)
    ]
    return "\n".join(outputs) + f"\n\nAnswer my first question: {question.strip()}"


def template_answer(question: str, plan: Plan, results: Sequence[Mapping[str, Any]]) -> str:
    """The answer written from the results alone: what each tool found, failed at, or said.

    With no action planned it is the plan's own reply (what cannot be done, or a request to clarify).
    """
    if not plan.actions:
        return plan.value or "No tool was run, so there is nothing to answer from."
    lines = []
    for index, result in enumerate(results):
        lines.extend(_facts(_tool_name(plan, index, result), result))
    for action in plan.actions[len(results) :]:
        lines.append(f"{action.API_name} returned no result.")
    return "\n".join(lines)


def _walk_numbers(value: Any) -> Iterable[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            yield float(value)
    elif isinstance(value, str):
        yield from (float(m.group()) for m in _NUMBER.finditer(_THOUSANDS.sub("", value)))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk_numbers(key)
            yield from _walk_numbers(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_numbers(item)


def _decimals(token: str) -> int:
    return len(token.split(".")[1]) if "." in token else 0


def _supported(token: str, percent: bool, known: Sequence[float]) -> bool:
    """Whether ``token`` is a known number as written, rounded to its decimals (or as a percentage)."""
    number, decimals = float(token), _decimals(token)
    candidates = [(number, decimals)] + ([(number / 100, decimals + 2)] if percent else [])
    return any(math.isclose(round(k, d), n, abs_tol=1e-9) for n, d in candidates for k in known)


def unsupported_numbers(
    text: str, results: Sequence[Mapping[str, Any]], question: str = "", plan: Plan | None = None
) -> list[str]:
    """The numbers in ``text`` that neither the results, the question nor the plan's parameters hold.

    A number counts as held when a held number rounded to as many decimals as ``text`` writes equals it
    (``2345.7`` for 2345.678), or, followed by ``%``, when it is a held fraction in percent.
    """
    known = list(_walk_numbers(list(results)))
    known += _walk_numbers(question)
    if plan is not None:
        known += _walk_numbers([a.API_params for a in plan.actions])
    missing = []
    text = _THOUSANDS.sub("", text)
    for match in _NUMBER.finditer(text):
        percent = _PERCENT.match(text, match.end()) is not None
        if not _supported(match.group(), percent, known):
            missing.append(match.group())
    return list(dict.fromkeys(missing))


def answer(
    question: str,
    plan: Plan,
    results: Sequence[Mapping[str, Any]],
    generate: Callable[[str], str] | None = None,
) -> Answer:
    """The answer to ``question``: the model's when ``generate`` is given and its numbers check, else the template's."""
    template = template_answer(question, plan, results)
    if generate is None or not plan.actions:
        return Answer(template)
    try:
        written = str(generate(second_round_prompt(question, plan, results)) or "").strip()
    except Exception as exc:
        logger.warning("the language model failed to answer: %s: %s", type(exc).__name__, exc)
        return Answer(
            template, note=f"the language model failed ({type(exc).__name__}); this answer is the template's"
        )
    if not written:
        return Answer(template, note="the language model returned nothing; this answer is the template's")
    rejected = unsupported_numbers(written, results, question, plan)
    if rejected:
        logger.info("language model answer not used: numbers %s are in no tool result", rejected)
        return Answer(
            template,
            note="the language model's answer was not used: it stated numbers that no tool returned",
            rejected=tuple(rejected),
        )
    return Answer(written, engine=LLM)


def compose_answer(
    question: str,
    plan: Plan,
    results: Sequence[Mapping[str, Any]],
    generate: Callable[[str], str] | None = None,
) -> str:
    """``answer(...)`` as text, with its note when a model's answer was not used."""
    return str(answer(question, plan, results, generate))
