"""The ``report_generation`` tool: a report (FINDINGS, IMPRESSION) of what the job's tools found.

Engines, in the order ``run`` prefers them:

* a language model (``models.llm``, else the packaged SmolLM2-135M-Instruct) that rewrites the template
  report into prose, section by section; the fact guard (``guard.check_rewrite``) keeps the rewrite only
  if it adds no number, finding or anatomy the template lacks and drops none of its numbers;
* ``Structured report template`` (classical): the sentences of ``template.build_report``.

``ToolResult.engine`` names the engine whose text is returned. When a rewrite was made, a last line says
which model made it, or that it was rejected and why (the rule it broke, never the invented words,
which would otherwise end up in the report); the full reason is logged.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from tools.base import EngineKind, EngineStatus, Queue, Tool, ToolCard, ToolInput, ToolResult, ToolStatus
from tools.llm import generate, llm_engine, llm_engine_version, load_causal_lm
from tools.report_generation import guard, template

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 384
PARAMETERS = {
    "type": "object",
    "properties": {
        "engine": {"enum": ["template", "llm"]},
        "style": {"type": "string", "maxLength": 200},
        "max_new_tokens": {"type": "integer", "minimum": 8, "maximum": 2048},
    },
    "additionalProperties": False,
}
REWRITE_INSTRUCTION = (
    "You edit radiology reports. Rewrite the text the user gives you as fluent, concise report prose. "
    "Use only the facts in it: keep every number and unit exactly as written, and do not add findings, "
    "diagnoses, anatomy, normal statements or recommendations. Reply with the rewritten text only."
)
_ECHOED_HEADING = re.compile(r"^\s*(?:findings?|impressions?)\s*:\s*", re.IGNORECASE)


class ReportGenerationTool(Tool):
    """Writes the study's report from the structured results of the job's earlier actions.

    Parameters: ``engine`` (``"llm"`` or ``"template"``; default ``"llm"`` when a language model can run
    here, else ``"template"``), ``style`` (a wish for the prose, e.g. "short", given to the language model;
    the template has one style) and ``max_new_tokens`` (per section, for the language model).
    """

    card = ToolCard(
        name="report_generation",
        description=(
            "Write a radiology report (FINDINGS and IMPRESSION) of the results of the earlier actions: "
            "volumes, areas, structures found, classifications, tools that failed. Run it after them."
        ),
        tasks=("report_generation", "report"),
        modalities=("CT", "MR", "CR", "DX", "US", "SM", "XA", "MG", "PT", "NM", "OT"),
        parameters=PARAMETERS,
        outputs=("text",),
        queue=Queue.GPU,
        aliases=("chatcad-g", "chatcad", "report generation"),
    )

    def engines(self) -> list[EngineStatus]:
        return [
            llm_engine(self.models),
            EngineStatus(template.ENGINE_NAME, EngineKind.CLASSICAL, True, "ready"),
        ]

    def load(self) -> None:
        if llm_engine(self.models).ready:
            load_causal_lm(self.models, self.models.device)

    def run(self, tool_input: ToolInput) -> ToolResult:
        report = template.build_report(
            tool_input.prior_results, tool_input.metadata, tool_input.modality, tool_input.body_part
        )
        llm = llm_engine(self.models)
        choice = tool_input.params.get("engine") or ("llm" if llm.ready else "template")
        if choice not in ("llm", "template"):
            return ToolResult.failed(
                template.ENGINE_NAME, f"Invalid 'engine' value {choice!r} - must be 'llm' or 'template'"
            )
        if choice == "llm" and not llm.ready:
            return ToolResult.unavailable(
                llm.name, f"the {llm.name} engine cannot run here ({llm.reason}); ask for engine 'template'"
            )
        if choice == "template" or not report.has_results:
            return template_result(report.text)
        return self._rewritten(report, tool_input, llm.name)

    def _rewritten(self, report: template.Report, tool_input: ToolInput, engine: str) -> ToolResult:
        """The language model's rewrite when the guard accepts it, else the template with the reason."""
        max_new_tokens = int(tool_input.params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        try:
            model, tokenizer, engine = load_causal_lm(self.models, tool_input.device)
            rewrite = rewrite_report(report, model, tokenizer, tool_input.params.get("style"), max_new_tokens)
        except Exception as exc:
            logger.warning("the %s rewrite could not run, the template report is kept: %s", engine, exc)
            return template_result(report.text, f"the {engine} rewrite could not run ({type(exc).__name__})")
        verdict = guard.check_rewrite(report.text, rewrite)
        if not verdict.accepted:
            logger.info(
                "the %s rewrite was rejected, the template report is kept: %s", engine, verdict.reason
            )
            return template_result(report.text, f"the {engine} rewrite was rejected: it {verdict.rule}")
        note = (
            f"(Prose by {engine} from the {template.ENGINE_NAME.lower()}; its numbers and terms were "
            "checked against the tool results.)"
        )
        return ToolResult(
            status=ToolStatus.OK,
            engine=engine,
            engine_version=llm_engine_version(self.models),
            text=f"{rewrite}\n\n{note}",
        )


def template_result(text: str, why_not_rewritten: str = "") -> ToolResult:
    """The template report; ``why_not_rewritten`` (when a rewrite was tried) becomes its last line."""
    if why_not_rewritten:
        text = f"{text}\n\n(Text of the {template.ENGINE_NAME.lower()}; {why_not_rewritten}.)"
    return ToolResult(
        status=ToolStatus.OK, engine=template.ENGINE_NAME, engine_version=template.ENGINE_VERSION, text=text
    )


def rewrite_report(
    report: template.Report, model: Any, tokenizer: Any, style: str | None, max_new_tokens: int
) -> str:
    """The report rewritten section by section (a small model keeps one short section straight)."""
    findings = rewrite_section(report.findings, model, tokenizer, style, max_new_tokens)
    impression = rewrite_section(report.impression, model, tokenizer, style, max_new_tokens)
    return (
        template.section_text(template.FINDINGS_HEADING, [findings])
        + "\n\n"
        + template.section_text(template.IMPRESSION_HEADING, [impression])
    )


def rewrite_section(
    sentences: tuple[str, ...], model: Any, tokenizer: Any, style: str | None, max_new_tokens: int
) -> str:
    """One section in prose; the budget is twice the section's tokens (a rewrite is not longer), capped."""
    text = "\n".join(sentences)
    instruction = REWRITE_INSTRUCTION + (f" Style: {style.strip()}." if style and style.strip() else "")
    budget = min(max_new_tokens, 2 * len(tokenizer(text)["input_ids"]) + 16)
    reply = generate(
        model,
        tokenizer,
        [{"role": "system", "content": instruction}, {"role": "user", "content": text}],
        budget,
        repetition_penalty=1.1,
    )
    return _ECHOED_HEADING.sub("", reply.strip().strip('"')).strip()
