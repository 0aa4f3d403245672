"""Ask the agent a free-text question about a study: plan, run the tools, answer; optionally send an SR.

The REST API (``POST /studies/{uid}/ask``) and the CLI (``medagent ask``) both call ``ask_study``. The
question becomes a job in the index like a routed one (its plan, each action's state and timing), so
``/jobs/{id}`` shows it; the actions run here, in the calling process, one after the other, through
``dicom_node.pipeline.run_action``. The answer is written from the tools' results by
``agent_core.answer`` (it states no number that no tool returned) and kept beside the results
(``results/<job>/answer.json``). With ``send_sr`` the tools' results are encoded as for a routed job
(SEG, SR, SC) together with an SR holding the question and the answer, and queued in the outbox for the
destinations; a running node sends them.

The same question about the same instances (and destinations) is the same job: asked again, the stored
results are reused when every action finished, so the answer comes back at once. An action another job
finished on the same series with the same parameters (the routed job's segmentation) is reused too
(``pipeline.run_action``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent_core.answer import answer as compose_answer
from agent_core.planner import StudyContext, planner_metadata
from agent_core.planner.factory import make_planner
from agent_core.protocol import Plan
from agent_core.registry import ToolRegistry
from config import Route, Settings
from dicom_node import pipeline
from dicom_node.admin.errors import EntityConflict, EntityNotFound, InvalidEntity
from dicom_node.encode import EncodingContext, encode_results
from dicom_node.index import Index
from dicom_node.spool import write_durably
from dicom_node.tracker import instances_digest
from tools.base import ToolResult, ToolStatus

__all__ = [
    "ANSWER_ALGORITHM",
    "AskResult",
    "Question",
    "answer_question",
    "ask_study",
    "prepare_question",
    "stored_answer",
]
logger = logging.getLogger(__name__)

#: the Algorithm Name of the SR that carries an answer (its version is the node's)
ANSWER_ALGORITHM = "MedAgent answer"
#: ``progress(stage, done, total)``: stages are "planning", "<tool>" for each action, "answering", "encoding"
Progress = Callable[[str, int, int], None]
_FINISHED = {"ok", "unavailable", "failed"}


@dataclass
class AskResult:
    """What a question got: the job, the plan, each action's result summary, the answer, what was sent."""

    job_id: str
    study_instance_uid: str
    series_instance_uid: str
    question: str
    plan: dict[str, Any]
    answer: str
    answer_engine: str
    note: str
    results: list[dict[str, Any]]
    destinations: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # SOP Instance UIDs queued for the destinations
    reused: bool = False  # the job existed and its stored results were used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _answer_path(settings: Settings, job_id: str) -> Path:
    return Path(settings.node.storage) / "results" / job_id / "answer.json"


def stored_answer(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """The question and answer kept for a job made by ``ask_study``; None for other jobs."""
    path = _answer_path(settings, job_id)
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _series_rows(
    index: Index, study_instance_uid: str, question: str, series_instance_uid: str | None
) -> list[Any]:
    every = Route(name="ask", match={}, instruction=question)
    wanted = None if series_instance_uid is None else [series_instance_uid]
    candidates = pipeline.select_series(index, study_instance_uid, every, wanted)
    if candidates:
        return candidates[0]
    if series_instance_uid is not None:
        raise InvalidEntity(
            [("series_instance_uid", f"'{series_instance_uid}' is no image series of this study")]
        )
    raise EntityConflict(f"study {study_instance_uid} holds no image series to ask about")


def _destinations(
    settings: Settings, index: Index, study_instance_uid: str, names: Sequence[str] | None
) -> list[str]:
    known = [destination.name for destination in settings.destinations]
    if names:
        for name in names:
            if name not in known:
                raise InvalidEntity(
                    [("destinations", f"'{name}' is not a configured destination (known: {known})")]
                )
        return list(dict.fromkeys(names))
    study = index.study(study_instance_uid)
    route = next((r for r in settings.routes if study is not None and r.name == study["route"]), None)
    if route is None or not route.destinations:
        raise InvalidEntity(
            [("destinations", "send_sr needs destinations: name them (the study's route sends nowhere)")]
        )
    return list(route.destinations)


def _context(rows: list[Any]) -> StudyContext:
    attributes: dict[str, Any] = json.loads(rows[0]["attributes"])
    return StudyContext(
        modality=attributes.get("Modality", ""),
        body_part=attributes.get("BodyPartExamined", ""),
        study_description=attributes.get("StudyDescription", ""),
        series_description=attributes.get("SeriesDescription", ""),
        slices=len(rows),
        metadata=planner_metadata(attributes),
    )


@dataclass(frozen=True)
class Question:
    """A question recorded as a job (planned, not yet run): what ``answer_question`` needs."""

    job_id: str
    study_instance_uid: str
    series_instance_uid: str
    question: str
    plan: Plan
    destinations: list[str]
    send_sr: bool
    reused: bool  # the job existed and every action had finished: its results are reused


def prepare_question(
    settings: Settings,
    index: Index,
    registry: ToolRegistry,
    study_instance_uid: str,
    question: str,
    *,
    series_instance_uid: str | None = None,
    send_sr: bool = False,
    destinations: Sequence[str] | None = None,
) -> Question:
    """Check the request, plan ``question`` on the study's largest image series (or the one named) and
    record the job; quick (the planner only). ``EntityNotFound`` for an unknown study, ``InvalidEntity``
    naming the field for a bad value, ``EntityConflict`` for a study without an image series."""
    question = question.strip()
    if not question:
        raise InvalidEntity([("question", "must not be empty")])
    if index.study(study_instance_uid) is None:
        raise EntityNotFound("study", study_instance_uid)
    targets = _destinations(settings, index, study_instance_uid, destinations) if send_sr else []
    rows = _series_rows(index, study_instance_uid, question, series_instance_uid)
    series_uid = rows[0]["series_instance_uid"]
    planning_started_at = time.time()
    plan = make_planner(settings, registry).plan(question, _context(rows))
    identity = ["ask", study_instance_uid, series_uid, instances_digest(rows), question, ",".join(targets)]
    job_id = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:24]
    created = index.create_job(
        job_id=job_id,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_uid,
        route=None,
        instruction=question,
        destinations=targets,
        plan=plan.to_dict(),
        planning_started_at=planning_started_at,
    )
    job = index.job(job_id)
    assert job is not None
    finished = all(row["state"] in _FINISHED for row in index.actions(job_id))
    logger.info("job %s: question on study %s series %s", job_id, study_instance_uid, series_uid)
    return Question(
        job_id=job_id,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_uid,
        question=question,
        plan=Plan.from_json(job["plan"]),  # an existing job keeps the plan it was made with
        destinations=targets,
        send_sr=send_sr,
        reused=not created and finished and _answer_path(settings, job_id).exists(),
    )


def answer_question(
    settings: Settings,
    index: Index,
    registry: ToolRegistry,
    question: Question,
    progress: Progress | None = None,
) -> AskResult:
    """Run the question's actions here, one after the other, write the answer, and with ``send_sr``
    encode and queue the results and the answer SR. Slow: the tools run in this process."""
    report = progress or (lambda stage, done, total: None)
    plan, job_id = question.plan, question.job_id
    total = len(plan.actions)
    for action_index, action in enumerate(plan.actions):
        report(action.API_name, action_index, total)
        if not question.reused:
            pipeline.run_action(settings, index, job_id, action_index, registry)
    report("answering", total, total)
    results = [_result(settings, job_id, i, action.API_name) for i, action in enumerate(plan.actions)]
    written = compose_answer(question.question, plan, results)
    outputs: list[str] = []
    if question.send_sr:
        report("encoding", total, total)
        outputs = pipeline.finalize_job(settings, index, job_id)
        job = index.job(job_id)
        outputs.append(
            _queue_answer_sr(settings, index, job, written.text, question.question, question.destinations)
        )
    else:
        failed = [f"action {r['index']} ({r['tool']}): {r['error']}" for r in results if r["status"] != "ok"]
        state = "failed" if failed and len(failed) == len(results) else "done"
        index.set_job_state(job_id, state, "; ".join(failed) or None)
    document = {
        "question": question.question,
        "answer": written.text,
        "engine": written.engine,
        "note": written.note,
        "answered_at": time.time(),
    }
    write_durably(_answer_path(settings, job_id), json.dumps(document, indent=1).encode())
    return AskResult(
        job_id=job_id,
        study_instance_uid=question.study_instance_uid,
        series_instance_uid=question.series_instance_uid,
        question=question.question,
        plan=plan.to_dict(),
        answer=written.text,
        answer_engine=written.engine,
        note=written.note,
        results=results,
        destinations=question.destinations,
        outputs=outputs,
        reused=question.reused,
    )


def ask_study(
    settings: Settings,
    index: Index,
    registry: ToolRegistry,
    study_instance_uid: str,
    question: str,
    *,
    series_instance_uid: str | None = None,
    send_sr: bool = False,
    destinations: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> AskResult:
    """``prepare_question`` then ``answer_question``: plan, run, answer (``send_sr``: also queue the
    results and the answer SR for ``destinations``, default those of the study's route)."""
    report = progress or (lambda stage, done, total: None)
    report("planning", 0, 1)
    prepared = prepare_question(
        settings,
        index,
        registry,
        study_instance_uid,
        question,
        series_instance_uid=series_instance_uid,
        send_sr=send_sr,
        destinations=destinations,
    )
    return answer_question(settings, index, registry, prepared, report)


def _result(settings: Settings, job_id: str, action_index: int, tool: str) -> dict[str, Any]:
    path = pipeline._results_path(settings, job_id, action_index)
    if not path.with_suffix(".json").exists():
        summary = ToolResult.failed(tool, "the action left no result").summary(tool)
    else:
        summary = ToolResult.load(path).summary(tool)
    return {"index": action_index, **summary}


def _queue_answer_sr(
    settings: Settings, index: Index, job: Any, text: str, question: str, destinations: list[str]
) -> str:
    """Encode the answer as an SR (TID 1500 text) on the job's series, store it, queue it; its UID."""
    volume = pipeline.load_job_volume(index, job)
    context = EncodingContext.from_settings(settings)
    result = ToolResult(
        status=ToolStatus.OK, engine=ANSWER_ALGORITHM, engine_version=context.software_version, text=text
    )
    (encoded,) = [
        item
        for item in encode_results(
            volume, result, ANSWER_ALGORITHM, context.software_version, context, question=question
        )
        if item.kind.value == "SR"
    ]
    dataset = encoded.dataset
    sop_instance_uid = str(dataset.SOPInstanceUID)
    output = Path(settings.node.storage) / "outputs" / job["study_instance_uid"] / f"{sop_instance_uid}.dcm"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_durably(output, buffer.getvalue())
    index.record_output(
        sop_instance_uid=sop_instance_uid,
        job_id=job["job_id"],
        kind="SR",
        sop_class_uid=str(dataset.SOPClassUID),
        path=str(output),
        destinations=destinations,
    )
    logger.info("job %s: answer SR %s queued for %s", job["job_id"], sop_instance_uid, destinations)
    return sop_instance_uid
