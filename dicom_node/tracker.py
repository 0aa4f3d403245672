"""Study completion: decide when a study (or each of its series) has arrived, and what to plan for it.

A sender never says "this study is complete", so completion is a policy (``CompletionPolicy``, per route,
overridden per calling AE by ``sources[].completion``). ``decide`` is the policy as a pure function of what
the index knows of a unit (a study, or a series when grouping by series) and the time; ``sweep`` applies it
to every study still receiving and to those an admin asked to process now.

What a completed unit gets is decided from what changed since its last completion: the index keeps, per
series, the digest of its SOP Instance UIDs when it last completed (``series_completions``). A unit whose
instance set did not change (an identical resend) gets no job; a unit that grew after its study (or series)
had a job gets what ``on_growth`` says. Planning runs before the completion is recorded, so a crash in
between re-plans on restart, and the deterministic job ids (``pipeline.plan_study``) make that a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from config import CompletionPolicy, Settings
from config.settings import GroupBy, OnGrowth
from dicom_node.index import Index

logger = logging.getLogger(__name__)


class Completion(str, Enum):
    """Why a unit completed."""

    QUIET = "quiet"
    RELEASE = "release"
    EXPECTED_SERIES = "expected_series"
    FORCED = "forced"
    MANUAL = "manual"


@dataclass(frozen=True)
class UnitState:
    """What completion knows of one unit (a study, or one series of it). Times are UNIX seconds.

    ``first_pending_at``: the first instance received since the unit last completed (the force-complete
    clock starts there); ``released_at``: the latest release of an association that delivered the unit's
    instances; ``open_associations``: such associations still open; ``series_in_study``: distinct series
    the study holds now; ``requested_at``: when "process now" was asked, if it was.
    """

    first_pending_at: float
    last_received_at: float
    series_in_study: int = 1
    released_at: float | None = None
    open_associations: int = 0
    requested_at: float | None = None


@dataclass(frozen=True)
class Decision:
    """``reason`` is None while the unit is not complete; ``due_at`` is when it completes if nothing arrives."""

    reason: Completion | None
    due_at: float

    @property
    def complete(self) -> bool:
        return self.reason is not None


def decide(state: UnitState, policy: CompletionPolicy, now: float) -> Decision:
    """Whether a unit is complete at ``now`` under ``policy``, and why; the earliest rule that fires wins.

    The release hint counts only when no association that delivered the unit is still open and no
    instance arrived after the release; it and ``expected_series`` shorten the wait to
    ``release_quiet_seconds`` (never beyond ``quiet_seconds``).
    """
    if state.requested_at is not None:
        return Decision(Completion.MANUAL, min(now, state.requested_at))
    short_wait = min(policy.release_quiet_seconds, policy.quiet_seconds)
    candidates = [(state.last_received_at + policy.quiet_seconds, Completion.QUIET)]
    if (
        policy.release_hint
        and state.released_at is not None
        and state.open_associations == 0
        and state.released_at >= state.last_received_at
    ):
        candidates.append((state.released_at + short_wait, Completion.RELEASE))
    if policy.expected_series is not None and state.series_in_study >= policy.expected_series:
        candidates.append((state.last_received_at + short_wait, Completion.EXPECTED_SERIES))
    candidates.append((state.first_pending_at + policy.force_complete_seconds, Completion.FORCED))
    due_at, reason = min(candidates, key=lambda candidate: candidate[0])
    return Decision(reason if now >= due_at else None, due_at)


def effective_policy(settings: Settings, route_name: str | None, calling_ae_title: str) -> CompletionPolicy:
    """The route's completion policy (the default one when unrouted) with the calling AE's overrides."""
    policy = CompletionPolicy()
    for route in settings.routes:
        if route.name == route_name:
            policy = route.completion
            break
    for source in settings.sources:
        if source.ae_title == calling_ae_title.strip():
            return policy.overridden_by(source.completion)
    return policy


def instances_digest(rows: Iterable[sqlite3.Row]) -> str:
    """A short digest of instance rows: their SOP Instance UIDs and content, so a new version counts."""
    return instance_set_digest(f"{row['sop_instance_uid']}:{row['content_hash'] or ''}" for row in rows)


def instance_set_digest(sop_instance_uids: Iterable[str]) -> str:
    """A short digest of a set of SOP Instance UIDs (order does not matter)."""
    digest = hashlib.sha256()
    for uid in sorted(sop_instance_uids):
        digest.update(uid.encode() + b"\n")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class PlanRequest:
    """What a completed unit asks the pipeline to plan.

    ``series_instance_uids`` limits the candidate series (None: every series of the study); ``revision``,
    when not empty, enters the job ids so that ``on_growth: reprocess`` gets new jobs for unchanged series.
    """

    study_instance_uid: str
    route: str
    group_by: GroupBy
    series_instance_uids: tuple[str, ...] | None
    revision: str = ""
    reason: Completion = Completion.QUIET


@dataclass(frozen=True)
class CompletedUnit:
    """A unit the sweep completed, and what it asked to plan (None: nothing to plan)."""

    study_instance_uid: str
    series_instance_uids: tuple[str, ...]
    reason: Completion
    plan: PlanRequest | None


def sweep(
    settings: Settings,
    index: Index,
    process: Callable[[PlanRequest], object],
    now: float | None = None,
    study_instance_uid: str | None = None,
    listening_since: float = 0.0,
) -> list[CompletedUnit]:
    """Complete every due unit of the studies to check (or of one study); call ``process`` for what to plan.

    A unit is recorded complete only after ``process`` returned; if it raises, the error is logged and
    the unit is tried again at the next sweep. ``listening_since`` is when the SCP started: time the node
    was down does not count as quiet, so a sender that resends after a restart is not cut off mid-study.
    """
    now = time.time() if now is None else now
    completed: list[CompletedUnit] = []
    for study in index.studies_to_check(study_instance_uid):
        try:
            completed.extend(_sweep_study(settings, index, study, process, now, listening_since))
        except Exception:
            logger.exception("study %s: completion failed; trying again", study["study_instance_uid"])
    return completed


def _sweep_study(
    settings: Settings,
    index: Index,
    study: sqlite3.Row,
    process: Callable[[PlanRequest], object],
    now: float,
    listening_since: float = 0.0,
) -> list[CompletedUnit]:
    study_instance_uid = study["study_instance_uid"]
    policy = effective_policy(settings, study["route"], study["calling_ae_title"])
    progress = index.series_progress(study_instance_uid)
    pending = [row for row in progress if row["first_pending_at"] is not None]
    if policy.group_by is GroupBy.SERIES:
        units = [[row] for row in pending]
    else:
        units = [pending] if pending else []
    completed: list[CompletedUnit] = []
    waiting = False
    for unit in units:
        released = [row["released_at"] for row in unit if row["released_at"] is not None]
        state = UnitState(
            first_pending_at=min(row["first_pending_at"] for row in unit),
            last_received_at=max(listening_since, *(row["last_received_at"] for row in unit)),
            series_in_study=len(progress),
            released_at=max(released) if released else None,
            open_associations=sum(row["open_associations"] for row in unit),
            requested_at=study["requested_at"],
        )
        reason = decide(state, policy, now).reason
        if reason is None:
            waiting = True
            continue
        waited = now - state.last_received_at
        completed.append(_complete_unit(index, study, unit, policy, reason, waited, process))
    if study["requested_at"] is not None:
        if not pending:
            logger.info("study %s: process now requested; nothing new since it completed", study_instance_uid)
        index.clear_processing_request(study_instance_uid, study["requested_at"])
    if not waiting and study["state"] == "receiving":
        state_name = "complete" if study["route"] else "unrouted"
        index.mark_study(study_instance_uid, state_name, study["last_received_at"])
    return completed


def _complete_unit(
    index: Index,
    study: sqlite3.Row,
    unit: list[sqlite3.Row],
    policy: CompletionPolicy,
    reason: Completion,
    waited: float,
    process: Callable[[PlanRequest], object],
) -> CompletedUnit:
    study_instance_uid = study["study_instance_uid"]
    series_uids = tuple(row["series_instance_uid"] for row in unit)
    label = (
        study_instance_uid
        if policy.group_by is GroupBy.STUDY
        else f"{study_instance_uid} series {series_uids[0]}"
    )
    if reason is Completion.FORCED:
        logger.warning(
            "study %s force-completed %.0f s after its first instance while still receiving",
            label,
            policy.force_complete_seconds,
        )
    else:
        logger.info("study %s complete (%s, %.1f s after its last instance)", label, reason.value, waited)
    records = []
    changed = []
    for row in unit:
        instances = index.instances_of_series(row["series_instance_uid"])
        digest = instances_digest(instances)
        records.append((row["series_instance_uid"], digest, len(instances), row["last_received_at"]))
        if digest != row["instance_digest"]:
            changed.append(row["series_instance_uid"])
    request = _plan_request(index, study, series_uids, tuple(changed), policy, reason, label)
    if request is not None:
        process(request)
    index.record_completion(study_instance_uid, records, reason.value)
    return CompletedUnit(study_instance_uid, series_uids, reason, request)


def _plan_request(
    index: Index,
    study: sqlite3.Row,
    series_uids: tuple[str, ...],
    changed: tuple[str, ...],
    policy: CompletionPolicy,
    reason: Completion,
    label: str,
) -> PlanRequest | None:
    study_instance_uid = study["study_instance_uid"]
    if study["route"] is None:
        logger.info("study %s: no route matches; kept without processing", label)
        return None
    if not changed:
        logger.info("study %s: same instances as at its last completion (a resend); no new job", label)
        return None
    jobs = index.jobs_of_study(study_instance_uid)
    if policy.group_by is GroupBy.SERIES:
        grown = any(job["series_instance_uid"] in series_uids for job in jobs)
        candidates: tuple[str, ...] | None = series_uids
    else:
        grown = bool(jobs)
        candidates = None
    revision = ""
    if grown:
        if policy.on_growth is OnGrowth.IGNORE:
            logger.info(
                "study %s: %d series changed after its job was made; on_growth is ignore, no new job",
                label,
                len(changed),
            )
            return None
        if policy.on_growth is OnGrowth.NEW_JOB:
            candidates = changed
        else:
            candidates = None
            revision = instances_digest(index.instances_of_study(study_instance_uid))
        logger.info(
            "study %s grew after its job was made (%d series changed); on_growth %s",
            label,
            len(changed),
            policy.on_growth.value,
        )
    return PlanRequest(
        study_instance_uid=study_instance_uid,
        route=study["route"],
        group_by=policy.group_by,
        series_instance_uids=candidates,
        revision=revision,
        reason=reason,
    )
