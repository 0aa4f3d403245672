"""Studies, jobs and the association log as plain dicts: what the REST API returns and the CLI prints.

Times are UNIX seconds (UTC). Nothing here identifies a patient: the index holds UIDs and
non-identifying attributes only.
"""

from __future__ import annotations

import json
from typing import Any

from config import Settings
from dicom_node import pipeline
from dicom_node.admin.ask import stored_answer
from dicom_node.admin.errors import EntityNotFound
from dicom_node.index import Index

__all__ = ["association", "job_detail", "job_summary", "study_detail", "study_summary"]

#: series-level keywords shown for each series (all of them are indexed, none identifies a patient)
_SERIES_KEYWORDS = ("Modality", "BodyPartExamined", "SeriesDescription", "SeriesNumber", "Manufacturer")


def study_summary(row: Any) -> dict[str, Any]:
    return {
        "study_instance_uid": row["study_instance_uid"],
        "calling_ae_title": row["calling_ae_title"],
        "route": row["route"],
        "state": row["state"],
        "first_received_at": row["first_received_at"],
        "last_received_at": row["last_received_at"],
        "instances": int(row["instances"]),
        "series": int(row["series"]),
        "jobs": int(row["jobs"]),
    }


def study_detail(index: Index, study_instance_uid: str) -> dict[str, Any]:
    """A study with its series and its jobs; ``EntityNotFound`` when it is not in the index."""
    study = index.study(study_instance_uid)
    if study is None:
        raise EntityNotFound("study", study_instance_uid)
    series = []
    for row in index.series_of_study(study_instance_uid):
        attributes = json.loads(row["attributes"] or "{}")
        series.append(
            {
                "series_instance_uid": row["series_instance_uid"],
                "instances": int(row["instances"]),
                "size": int(row["size"] or 0),
                "first_received_at": row["first_received_at"],
                "last_received_at": row["last_received_at"],
                "attributes": {k: attributes[k] for k in _SERIES_KEYWORDS if k in attributes},
            }
        )
    jobs = [job_summary(row) for row in index.jobs_of_study(study_instance_uid)]
    return {
        "study_instance_uid": study["study_instance_uid"],
        "calling_ae_title": study["calling_ae_title"],
        "route": study["route"],
        "state": study["state"],
        "first_received_at": study["first_received_at"],
        "last_received_at": study["last_received_at"],
        "instances": sum(item["instances"] for item in series),
        "series": series,
        "jobs": jobs,
    }


def job_summary(row: Any) -> dict[str, Any]:
    plan = json.loads(row["plan"])
    return {
        "job_id": row["job_id"],
        "study_instance_uid": row["study_instance_uid"],
        "series_instance_uid": row["series_instance_uid"],
        "route": row["route"],
        "instruction": row["instruction"],
        "tools": [action.get("API_name", "") for action in plan.get("actions", [])],
        "destinations": json.loads(row["destinations"]),
        "state": row["state"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "error": row["error"],
    }


def _action_result(settings: Settings, job_id: str, action_index: int) -> dict[str, Any] | None:
    """What an action returned, without its masks (their labels only); None before it ran."""
    path = pipeline._results_path(settings, job_id, action_index).with_suffix(".json")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {
        "status": document.get("status"),
        "engine": document.get("engine"),
        "engine_version": document.get("engine_version"),
        "structures": document.get("mask_labels", []),
        "boxes": len(document.get("boxes", [])),
        "labels": document.get("labels", {}),
        "measurements": document.get("measurements", []),
        "text": document.get("text", ""),
        "sources": document.get("sources", []),
        "error": document.get("error", ""),
    }


def job_detail(settings: Settings, index: Index, job_id: str) -> dict[str, Any]:
    """A job: its plan (thoughts, actions, value), each action's state, timing and result, its outputs
    and their deliveries, and the answer when the job was a question; ``EntityNotFound`` if unknown."""
    job = index.job(job_id)
    if job is None:
        raise EntityNotFound("job", job_id)
    plan = json.loads(job["plan"])
    planned = plan.get("actions", [])
    actions = []
    for row in index.actions(job_id):
        action_index = int(row["action_index"])
        started, finished = row["started_at"], row["finished_at"]
        actions.append(
            {
                "index": action_index,
                "API_name": row["api_name"],
                "API_params": planned[action_index].get("API_params", {})
                if action_index < len(planned)
                else {},
                "state": row["state"],
                "engine": row["engine"],
                "started_at": started,
                "finished_at": finished,
                "seconds": None if started is None or finished is None else round(finished - started, 3),
                "error": row["error"],
                "result": _action_result(settings, job_id, action_index),
            }
        )
    outputs = [
        {
            "sop_instance_uid": row["sop_instance_uid"],
            "kind": row["kind"],
            "sop_class_uid": row["sop_class_uid"],
            "created_at": row["created_at"],
        }
        for row in index.outputs(job_id)
    ]
    deliveries = [
        {
            "sop_instance_uid": row["sop_instance_uid"],
            "kind": row["kind"],
            "destination": row["destination"],
            "state": row["state"],
            "attempts": int(row["attempts"]),
            "last_status": row["last_status"],
            "last_error": row["last_error"],
            "first_attempt_at": row["first_attempt_at"],
            "next_attempt_at": row["next_attempt_at"],
            "delivered_at": row["delivered_at"],
        }
        for row in index.deliveries_of_job(job_id)
    ]
    return {
        **job_summary(job),
        "plan": {
            "thoughts": plan.get("thoughts", ""),
            "actions": planned,
            "value": plan.get("value", ""),
        },
        "actions": actions,
        "outputs": outputs,
        "deliveries": deliveries,
        "answer": stored_answer(settings, job_id),
    }


def association(row: Any) -> dict[str, Any]:
    return {
        "association_id": row["association_id"],
        "calling_ae_title": row["calling_ae_title"],
        "called_ae_title": row["called_ae_title"],
        "address": row["address"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "outcome": row["outcome"],
        "instances": int(row["instances"] or 0),
        "duplicates": int(row["duplicates"] or 0),
        "failed": int(row["failed"] or 0),
        "detail": row["detail"],
    }
