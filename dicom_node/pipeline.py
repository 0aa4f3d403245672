"""The job pipeline as plain functions: plan a completed study, run one action, encode and queue results.

Celery tasks (``workers.tasks``) are thin wrappers around ``run_action`` and ``finalize_job``; tests call
these functions directly. Each step is idempotent: a job id, its result files and its output UIDs depend only
on the study's instances, the instruction and the tool, so a redelivered task (a worker died, Redis handed it
to another) does not redo finished work: an action whose result is stored is not run again, a finished job
is not encoded again, an output already stored is not rewritten, and the outbox (one row per object and
destination) never sends an object twice. Two runs of one step at the same time write their files under
names of their own and rename them into place, so neither sees the other's partial file.

Errors that may pass when tried again later (``is_transient``: shared storage or the index out of reach)
propagate, for the task to retry; every other error is recorded on the action or the job.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from billiard.exceptions import SoftTimeLimitExceeded
from pydicom.multival import MultiValue

from agent_core.planner import StudyContext, planner_metadata
from agent_core.planner.factory import make_planner
from agent_core.protocol import REFERENCE, Plan, PlanError
from agent_core.registry import ToolRegistry
from config import Route, Settings
from config.settings import GroupBy
from dicom_node.encode import EncodingContext, encode_results
from dicom_node.errors import NodeError
from dicom_node.index import Index
from dicom_node.load import Volume, load_volume, read_series
from dicom_node.routing import route_matches
from dicom_node.spool import sync_directory, write_durably
from dicom_node.tracker import instances_digest
from tools.base import ToolInput, ToolResult, ToolStatus

logger = logging.getLogger(__name__)

#: OSError numbers that shared storage (NFS, SMB, a cloud mount) raises while it is away or busy
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ENOENT,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ENOSPC,
        errno.ENOTCONN,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
    }
)


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, sqlite3.OperationalError]
    try:
        import psycopg

        types.append(psycopg.OperationalError)  # the PostgreSQL index restarting or out of reach
    except ImportError:
        pass
    return tuple(types)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass when the step is tried again later.

    True for a dropped connection, a timeout, a locked or unreachable index, and an ``OSError`` whose errno
    is in ``TRANSIENT_ERRNOS`` (a file of the shared storage not there yet, a stale mount). False for
    everything else, e.g. an ``OSError`` without errno, as Pillow raises for broken compressed pixel data.
    """
    if isinstance(exc, _transient_types()):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def select_series(
    index: Index,
    study_instance_uid: str,
    route: Route,
    series_instance_uids: Collection[str] | None = None,
) -> list[list[sqlite3.Row]]:
    """The instances of each image series of the study whose first instance matches the route, largest first.

    ``series_instance_uids`` limits the candidates (None: every series of the study). Ties in size are
    broken by Series Instance UID, so the choice is the same on every run.
    """
    by_series: dict[str, list[sqlite3.Row]] = {}
    for row in index.instances_of_study(study_instance_uid):
        if series_instance_uids is None or row["series_instance_uid"] in series_instance_uids:
            by_series.setdefault(row["series_instance_uid"], []).append(row)
    candidates = []
    for rows in by_series.values():
        try:
            header = pydicom.dcmread(rows[0]["path"], stop_before_pixels=True)
        except Exception:
            logger.warning("series %s: first instance unreadable; skipped", rows[0]["series_instance_uid"])
            continue
        if "Rows" in header and route_matches(route, header):
            candidates.append(rows)
    return sorted(candidates, key=lambda rows: (-len(rows), rows[0]["series_instance_uid"]))


def plan_study(
    settings: Settings,
    index: Index,
    study_instance_uid: str,
    route: Route,
    registry: ToolRegistry,
    *,
    group_by: GroupBy | str = GroupBy.STUDY,
    series_instance_uids: Collection[str] | None = None,
    revision: str = "",
) -> list[str]:
    """Plan the route's instruction for a completed study and record the jobs; return the new job ids.

    ``group_by`` study: one job on the largest matching image series among the candidates; series: one
    job per matching image series. ``series_instance_uids`` limits the candidates (None: all). A job id
    depends only on the study, the series, its instance set, the instruction and ``revision``, so a job
    that exists already (same instances, same instruction) is not made again and is not returned.
    """
    group_by = GroupBy(group_by)
    candidates = select_series(index, study_instance_uid, route, series_instance_uids)
    if not candidates:
        logger.warning(
            "study %s: no image series matches route '%s'%s; nothing to do",
            study_instance_uid,
            route.name,
            "" if series_instance_uids is None else f" among the {len(series_instance_uids)} series asked",
        )
        return []
    if group_by is GroupBy.STUDY:
        candidates = candidates[:1]
    job_ids = []
    for rows in candidates:
        job_id = _plan_series(settings, index, study_instance_uid, rows, route, registry, revision)
        if job_id is not None:
            job_ids.append(job_id)
    return job_ids


def _plan_series(
    settings: Settings,
    index: Index,
    study_instance_uid: str,
    rows: list[sqlite3.Row],
    route: Route,
    registry: ToolRegistry,
    revision: str,
) -> str | None:
    attributes: dict[str, Any] = json.loads(rows[0]["attributes"])
    context = StudyContext(
        modality=attributes.get("Modality", ""),
        body_part=attributes.get("BodyPartExamined", ""),
        study_description=attributes.get("StudyDescription", ""),
        series_description=attributes.get("SeriesDescription", ""),
        slices=len(rows),
        metadata=planner_metadata(attributes),
    )
    planning_started_at = time.time()
    plan = make_planner(settings, registry).plan(route.instruction, context)
    series_instance_uid = rows[0]["series_instance_uid"]
    identity = [
        study_instance_uid,
        series_instance_uid,
        instances_digest(rows),
        route.instruction,
    ]
    job_id = hashlib.sha256("\n".join(identity + ([revision] if revision else [])).encode()).hexdigest()[:24]
    created = index.create_job(
        job_id=job_id,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        route=route.name,
        instruction=route.instruction,
        destinations=list(route.destinations),
        plan=plan.to_dict(),
        planning_started_at=planning_started_at,
    )
    if not created:
        logger.info(
            "study %s series %s: job %s exists already for these instances; not made again",
            study_instance_uid,
            series_instance_uid,
            job_id,
        )
        return None
    logger.info(
        "job %s for study %s series %s: %d action(s) %s",
        job_id,
        study_instance_uid,
        series_instance_uid,
        len(plan.actions),
        [a.API_name for a in plan.actions],
    )
    return job_id


def _results_path(settings: Settings, job_id: str, action_index: int) -> Path:
    return Path(settings.node.storage) / "results" / job_id / f"action{action_index}"


def _save_result(result: ToolResult, path: Path) -> None:
    """Store ``result`` as ``<path>.npz`` and ``<path>.json``, the JSON last: it marks the result complete.

    Both are written under names of this call's own and renamed into place, so two runs of one action at
    once (a task redelivered while the first run still goes on) never mix their files.
    """
    temporary = path.with_name(f"{path.name}-{uuid.uuid4().hex}.part")
    try:
        result.save(temporary)
        os.replace(temporary.with_suffix(".npz"), path.with_suffix(".npz"))
        os.replace(temporary.with_suffix(".json"), path.with_suffix(".json"))
    finally:
        for suffix in (".npz", ".json", ".json.part"):
            temporary.with_suffix(suffix).unlink(missing_ok=True)


#: DICOM keywords a tool may read (de-identified: no names, IDs, dates or UIDs)
TOOL_METADATA_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "Manufacturer",
    "ManufacturerModelName",
    "SliceThickness",
    "ContrastBolusAgent",
    "SOPClassUID",
)


def tool_metadata(volume: Volume) -> dict[str, str]:
    """The de-identified header values of the series' first instance that tools may read."""
    dataset = volume.datasets[0]
    metadata = {}
    for keyword in TOOL_METADATA_KEYWORDS:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        multiple = isinstance(value, (list, tuple, MultiValue))
        metadata[keyword] = "\\".join(map(str, value)) if multiple else str(value)
    return metadata


def tool_input_for(volume: Volume, params: dict[str, Any], instruction: str, device: str) -> ToolInput:
    """What a tool gets of a series: grey pixels the way round a viewer shows them, geometry, metadata.

    A MONOCHROME1 (inverted) grey image is mirrored within its value range, and its window with it, so
    that high values are bright for every tool, as on MONOCHROME2 images; CT keeps Hounsfield units
    (CT is never inverted). Colour images stay RGB ``uint8``.
    """
    image = volume.array
    window = volume.window
    if volume.inverted and not volume.is_color:
        low, high = float(np.min(image)), float(np.max(image))
        image = (low + high) - image.astype(np.float32)
        if window is not None:
            window = (low + high - window[0], window[1])
    return ToolInput(
        image=image,
        spacing=volume.spacing,
        modality=volume.modality,
        row_direction=tuple(volume.row_direction) if volume.row_direction is not None else (1.0, 0.0, 0.0),
        column_direction=(
            tuple(volume.column_direction) if volume.column_direction is not None else (0.0, 1.0, 0.0)
        ),
        body_part=str(volume.datasets[0].get("BodyPartExamined", "")),
        params=params,
        instruction=instruction,
        device=device,
        is_color=volume.is_color,
        window=window,
        metadata=tool_metadata(volume),
    )


def _prior_result(settings: Settings, job_id: str, action_index: int) -> ToolResult | None:
    """The stored result of an action of the job, or None when it has not ended."""
    path = _results_path(settings, job_id, action_index)
    if not path.with_suffix(".json").exists():
        return None
    return ToolResult.load(path)


def resolve_references(params: dict[str, Any], prior: list[ToolResult | None]) -> dict[str, Any]:
    """``params`` with every ``"$N.name"`` replaced by what action N returned under ``name``.

    ``boxes`` become the list of box dicts a box-prompted tool takes; ``labels``, ``text``, ``sources``
    and ``measurements`` their values; ``prompts`` the labels of N's boxes or masks. ``NodeError`` when
    action N did not succeed or returned nothing under that name: the action cannot run without it.
    """
    resolved = dict(params)
    for key, value in params.items():
        if not (isinstance(value, str) and (match := REFERENCE.match(value))):
            continue
        source, name = int(match.group(1)), match.group(2)
        result = prior[source] if source < len(prior) else None
        if result is None or result.status is not ToolStatus.OK:
            why = "has no result" if result is None else f"ended {result.status.value}: {result.error}"
            raise NodeError(f"parameter {key} = {value!r}: action {source} {why}")
        if name == "boxes":
            resolved[key] = [{"label": b.label, "frame": b.frame, "xyxy": list(b.xyxy)} for b in result.boxes]
        elif name == "prompts":
            resolved[key] = list(dict.fromkeys([*result.masks, *(b.label for b in result.boxes)]))
        elif name in ("labels", "text", "sources"):
            resolved[key] = getattr(result, name)
        elif name == "measurements":
            resolved[key] = [dict(m.__dict__) for m in result.measurements]
        else:
            raise NodeError(f"parameter {key} = {value!r}: a result has no output named {name!r}")
        if resolved[key] in ([], {}, ""):
            raise NodeError(f"parameter {key} = {value!r}: action {source} returned no {name}")
    return resolved


def load_job_volume(index: Index, job: sqlite3.Row) -> Volume:
    rows = index.instances_of_series(job["series_instance_uid"])
    return load_volume(read_series([row["path"] for row in rows]))


def run_action(
    settings: Settings, index: Index, job_id: str, action_index: int, registry: ToolRegistry
) -> str:
    """Run one action of a job and store its ``ToolResult``; return the action's final state.

    Never raises for a broken study or a failing tool: the error is recorded on the action, so the rest of
    the job (and the next study) goes on. Raises what ``is_transient`` accepts (the spool or the index out
    of reach), for the caller to try again later. An action whose result is stored already (a redelivered
    task) is not run again: its stored state is returned.
    """
    job = index.job(job_id)
    if job is None:
        raise NodeError(f"job {job_id} does not exist")
    plan = Plan.from_json(job["plan"])
    action = plan.actions[action_index]
    stored = _prior_result(settings, job_id, action_index)
    if stored is not None:
        logger.info(
            "job %s action %d (%s): result stored already (a redelivered task); not run again",
            job_id,
            action_index,
            action.API_name,
        )
        _record_action_state(index, job_id, action_index, stored)
        return stored.status.value
    index.set_job_state(job_id, "running")
    index.set_action_state(job_id, action_index, "running")
    reused = _finished_elsewhere(settings, index, job, plan, action_index, registry)
    if reused is not None:
        result, source = reused
        logger.info(
            "job %s action %d (%s): the result of job %s reused (same series, parameters and engine)",
            job_id,
            action_index,
            action.API_name,
            source,
        )
        _save_result(result, _results_path(settings, job_id, action_index))
        _record_action_state(index, job_id, action_index, result)
        return result.status.value
    try:
        volume = load_job_volume(index, job)
        prior = [_prior_result(settings, job_id, number) for number in range(action_index)]
    except Exception as exc:
        if is_transient(exc):
            raise
        logger.exception(
            "job %s action %d (%s): the series does not load", job_id, action_index, action.API_name
        )
        result = ToolResult.failed(action.API_name, f"{type(exc).__name__}: {exc}")
    else:
        result = _run_tool(settings, job, plan, action_index, volume, prior, registry)
    _save_result(result, _results_path(settings, job_id, action_index))
    _record_action_state(index, job_id, action_index, result)
    if result.status is not ToolStatus.OK:
        logger.warning(
            "job %s action %d (%s): %s: %s",
            job_id,
            action_index,
            action.API_name,
            result.status.value,
            result.error,
        )
    return result.status.value


def _finished_elsewhere(
    settings: Settings, index: Index, job: Any, plan: Plan, action_index: int, registry: ToolRegistry
) -> tuple[ToolResult, str] | None:
    """A successful result of the same action in another job on the same series, and that job's id.

    Only for a tool whose card is ``reusable`` (its result depends on the series and the parameters
    alone), with parameters that name no other action's result, from a job planned after the series last
    changed, made by the engine the tool would use now. A question about a study that was routed (or
    asked about) before gets the finished segmentation at once instead of a second run.
    """
    action = plan.actions[action_index]
    try:
        name = registry.canonical_name(action.API_name)
        tool = registry.get(name)
    except PlanError:  # an unknown tool: running it reports that
        return None
    if not tool.card.reusable or action.references():
        return None
    others = [
        other
        for other in index.jobs_of_study(job["study_instance_uid"])
        if other["job_id"] != job["job_id"] and other["series_instance_uid"] == job["series_instance_uid"]
    ]
    if not others:  # the common case, a study's only job: nothing more to read
        return None
    engines = tool.engines_that_may_run()
    rows = index.instances_of_series(job["series_instance_uid"])
    if not engines or not rows:
        return None
    changed = max(row["received_at"] for row in rows)
    for other in others:
        if other["created_at"] < changed:
            continue
        for number, candidate in enumerate(Plan.from_json(other["plan"]).actions):
            if candidate.API_params != action.API_params:
                continue
            try:
                if registry.canonical_name(candidate.API_name) != name:
                    continue
                result = _prior_result(settings, other["job_id"], number)
            except (PlanError, OSError, ValueError, KeyError):  # a tool gone, a result that does not read
                continue
            if result is not None and result.status is ToolStatus.OK and result.engine in engines:
                return result, str(other["job_id"])
    return None


def _run_tool(
    settings: Settings,
    job: sqlite3.Row,
    plan: Plan,
    action_index: int,
    volume: Volume,
    prior: list[ToolResult | None],
    registry: ToolRegistry,
) -> ToolResult:
    """Run the action's tool on the job's volume; any error it raises becomes a failed result."""
    action = plan.actions[action_index]
    try:
        tool = registry.get(action.API_name)
        params = resolve_references(action.API_params, prior)
        tool_input = tool_input_for(volume, params, job["instruction"], settings.models.device)
        tool_input.prior_results = [
            result.summary(plan.actions[number].API_name)
            for number, result in enumerate(prior)
            if result is not None
        ]
        return tool.run(tool_input)
    except SoftTimeLimitExceeded:  # a Celery worker's soft time limit: raised inside the tool's run
        limit = settings.queue.time_limit(registry.canonical_name(action.API_name))
        logger.error(
            "job %s action %d (%s): time limit reached", job["job_id"], action_index, action.API_name
        )
        return ToolResult.failed(
            action.API_name, f"the tool ran longer than its time limit of {limit:g} s (queue.time_limits)"
        )
    except Exception as exc:
        logger.exception("job %s action %d (%s) failed", job["job_id"], action_index, action.API_name)
        return ToolResult.failed(action.API_name, f"{type(exc).__name__}: {exc}")


def _record_action_state(index: Index, job_id: str, action_index: int, result: ToolResult) -> None:
    index.set_action_state(
        job_id, action_index, result.status.value, engine=result.engine, error=result.error or None
    )


def record_action_failure(
    settings: Settings, index: Index, job_id: str, action_index: int, error: str
) -> str:
    """Store a failed result for an action that could not run (its retries spent); return ``"failed"``.

    The job then goes on as after a tool error: its other actions run and its results are encoded.
    """
    job = index.job(job_id)
    if job is None:
        raise NodeError(f"job {job_id} does not exist")
    name = Plan.from_json(job["plan"]).actions[action_index].API_name
    result = ToolResult.failed(name, error)
    _save_result(result, _results_path(settings, job_id, action_index))
    _record_action_state(index, job_id, action_index, result)
    logger.error("job %s action %d (%s) failed: %s", job_id, action_index, name, error)
    return result.status.value


def record_job_failure(index: Index, job_id: str, error: str) -> None:
    """Mark a job failed whose encoding step could not run (its retries spent)."""
    index.set_job_state(job_id, "failed", error)
    logger.error("job %s failed: %s", job_id, error)


def _write_output(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically under a name of this call's own, then rename it into place."""
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    try:
        write_durably(temporary, data, sync_directory=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    sync_directory(path)


def finalize_job(settings: Settings, index: Index, job_id: str) -> list[str]:
    """Encode every successful action's result as DICOM, store it, and queue it for the job's destinations.

    Returns the SOP Instance UIDs of the job's objects, and records on the job when this step started and
    ended (``encoding_started_at``, ``encoding_finished_at``). A job that is finished already (``done`` or
    ``failed``: a redelivered task) is not encoded again; an object stored already is not rewritten or
    queued again. Raises what ``is_transient`` accepts, for the caller to try again later.
    """
    job = index.job(job_id)
    if job is None:
        raise NodeError(f"job {job_id} does not exist")
    if job["state"] in ("done", "failed"):
        logger.info("job %s is %s already (a redelivered task); not encoded again", job_id, job["state"])
        return [row["sop_instance_uid"] for row in index.outputs(job_id)]
    encoding_started_at = time.time()
    stored = {row["sop_instance_uid"] for row in index.outputs(job_id) if Path(row["path"]).exists()}
    destinations = json.loads(job["destinations"])
    plan = Plan.from_json(job["plan"])
    context = EncodingContext.from_settings(settings)
    sop_instance_uids: list[str] = []
    errors: list[str] = []
    volume: Volume | None = None
    for action_index, action in enumerate(plan.actions):
        path = _results_path(settings, job_id, action_index)
        if not path.with_suffix(".json").exists():
            error = f"action {action_index} ({action.API_name}) has no result: its task did not end"
            errors.append(error)
            index.set_action_state(job_id, action_index, "failed", error=error)
            continue
        result = ToolResult.load(path)
        if result.status is not ToolStatus.OK:
            errors.append(f"action {action_index} ({action.API_name}): {result.error}")
            continue
        has_mask = any(np.any(m) for m in result.masks.values())
        if not (has_mask or result.boxes or result.labels or result.text):
            errors.append(f"action {action_index} ({action.API_name}) returned nothing to encode")
            continue
        try:
            volume = volume or load_job_volume(index, job)
            for note in volume.notes:
                logger.info("job %s: %s", job_id, note)
            question = action.API_params.get("question")
            if not isinstance(question, str) or not question.strip():
                question = job["instruction"]
            objects = encode_results(
                volume, result, result.engine, result.engine_version, context, question=question
            )
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.exception("job %s: encoding the result of action %d failed", job_id, action_index)
            errors.append(f"action {action_index} ({action.API_name}) could not be encoded: {exc}")
            continue
        for encoded in objects:
            dataset = encoded.dataset
            sop_instance_uid = str(dataset.SOPInstanceUID)
            sop_instance_uids.append(sop_instance_uid)
            if sop_instance_uid in stored:
                logger.info("job %s: %s %s stored already", job_id, encoded.kind.value, sop_instance_uid)
                continue
            output = (
                Path(settings.node.storage)
                / "outputs"
                / job["study_instance_uid"]
                / f"{sop_instance_uid}.dcm"
            )
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            _write_output(output, buffer.getvalue())
            index.record_output(
                sop_instance_uid=sop_instance_uid,
                job_id=job_id,
                kind=encoded.kind.value,
                sop_class_uid=str(dataset.SOPClassUID),
                path=str(output),
                destinations=destinations,
            )
            logger.info(
                "job %s: %s %s stored, queued for %s",
                job_id,
                encoded.kind.value,
                sop_instance_uid,
                destinations,
            )
    state = "failed" if errors and not sop_instance_uids else "done"
    index.finish_encoding(job_id, state, "; ".join(errors) or None, encoding_started_at)
    logger.info(
        "job %s %s with %d object(s)%s",
        job_id,
        state,
        len(sop_instance_uids),
        f"; {errors}" if errors else "",
    )
    return sop_instance_uids
