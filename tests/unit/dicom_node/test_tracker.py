"""Study completion: the decision as a pure function, the policy in the config, and the sweep on a real index.

The sweep tests write rows with the index's own methods and move time by passing ``now`` (or by ageing
rows), so nothing here sleeps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from config import CompletionPolicy, ConfigError
from config.settings import GroupBy, OnGrowth, parse_settings
from dicom_node.index import Index
from dicom_node.tracker import (
    Completion,
    PlanRequest,
    UnitState,
    decide,
    effective_policy,
    instance_set_digest,
    sweep,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES_A = "1.2.826.0.1.3680043.8.498.1.1"
SERIES_B = "1.2.826.0.1.3680043.8.498.1.2"

# -- decide: a pure function of unit state, policy and time --------------------------------------------


def policy(**keys: Any) -> CompletionPolicy:
    return CompletionPolicy(**keys)


@pytest.mark.parametrize(
    ("state", "keys", "now", "reason", "due_at"),
    [
        # quiet period: complete quiet_seconds after the last instance, not before
        (UnitState(100, 110), {"quiet_seconds": 5}, 114.9, None, 115),
        (UnitState(100, 110), {"quiet_seconds": 5}, 115, Completion.QUIET, 115),
        # release hint: the wait shrinks to release_quiet_seconds after the release ...
        (UnitState(100, 110, released_at=111), {"quiet_seconds": 30}, 112, Completion.RELEASE, 112),
        (UnitState(100, 110, released_at=111), {"quiet_seconds": 30}, 111.5, None, 112),
        # ... but not when it is switched off, when an instance came after the release, or while another
        # association that delivered the unit is still open
        (UnitState(100, 110, released_at=111), {"quiet_seconds": 30, "release_hint": False}, 112, None, 140),
        (UnitState(100, 110, released_at=109), {"quiet_seconds": 30}, 112, None, 140),
        (UnitState(100, 110, released_at=111, open_associations=1), {"quiet_seconds": 30}, 112, None, 140),
        # release_quiet_seconds never lengthens the wait
        (
            UnitState(100, 110, released_at=110),
            {"quiet_seconds": 2, "release_quiet_seconds": 9},
            112,
            Completion.QUIET,
            112,
        ),
        # expected series: complete release_quiet_seconds after the last instance once they are all here
        (UnitState(100, 110, series_in_study=2), {"quiet_seconds": 30, "expected_series": 3}, 112, None, 140),
        (
            UnitState(100, 110, series_in_study=3),
            {"quiet_seconds": 30, "expected_series": 3},
            111,
            Completion.EXPECTED_SERIES,
            111,
        ),
        # force-complete: a unit that never goes quiet, force_complete_seconds after its first instance
        (
            UnitState(100, 159),
            {"quiet_seconds": 5, "force_complete_seconds": 60},
            160,
            Completion.FORCED,
            160,
        ),
        (UnitState(100, 159), {"quiet_seconds": 5, "force_complete_seconds": 60}, 159.5, None, 160),
        # process now: at once, whatever the timers say
        (UnitState(100, 110, requested_at=110.5), {"quiet_seconds": 30}, 111, Completion.MANUAL, 110.5),
    ],
)
def test_decide(state: UnitState, keys: dict, now: float, reason: Completion | None, due_at: float) -> None:
    decision = decide(state, policy(**keys), now)
    assert decision.reason is reason
    assert decision.complete is (reason is not None)
    assert decision.due_at == pytest.approx(due_at)


# -- the policy in the configuration -------------------------------------------------------------------


def settings_with(**sections: Any):
    data: dict[str, Any] = {
        "sources": [{"ae_title": "STORESCU"}, {"ae_title": "PACS"}],
        "routes": [{"name": "mr", "match": {"Modality": "MR"}, "instruction": "Describe the image"}],
    }
    data.update(sections)
    return parse_settings(data, environ={})


def test_policy_defaults_and_a_source_override_that_wins_key_by_key() -> None:
    default = CompletionPolicy()
    assert (default.quiet_seconds, default.release_hint, default.release_quiet_seconds) == (5, True, 1)
    assert (default.expected_series, default.force_complete_seconds) == (None, 3600)
    assert (default.group_by, default.on_growth) == (GroupBy.STUDY, OnGrowth.NEW_JOB)
    settings = settings_with(
        sources=[{"ae_title": "STORESCU"}, {"ae_title": "PACS", "completion": {"quiet_seconds": 30}}],
        routes=[
            {
                "name": "mr",
                "instruction": "Describe the image",
                "completion": {"quiet_seconds": 2, "group_by": "series", "on_growth": "ignore"},
            }
        ],
    )
    from_pacs = effective_policy(settings, "mr", "PACS")
    assert (from_pacs.quiet_seconds, from_pacs.group_by, from_pacs.on_growth) == (30, "series", "ignore")
    assert effective_policy(settings, "mr", "STORESCU").quiet_seconds == 2
    assert effective_policy(settings, None, "STORESCU") == CompletionPolicy()
    assert effective_policy(settings, None, "PACS").quiet_seconds == 30
    # the effective-config dump keeps an override to the keys that were written
    reloaded = parse_settings(settings.model_dump(mode="json"), environ={})
    assert effective_policy(reloaded, "mr", "PACS") == from_pacs


@pytest.mark.parametrize(
    ("completion", "message"),
    [
        ({"group_by": "patient"}, "routes[0].completion.group_by: 'patient' must be one of study, series"),
        (
            {"on_growth": "again"},
            "routes[0].completion.on_growth: 'again' must be one of new_job, reprocess, ignore",
        ),
        ({"quiet_seconds": 0}, "routes[0].completion.quiet_seconds:"),
        ({"expected_series": 0}, "routes[0].completion.expected_series:"),
        ({"force_complete_seconds": -1}, "routes[0].completion.force_complete_seconds:"),
        ({"quiet": 5}, "routes[0].completion.quiet: unknown key"),
    ],
)
def test_completion_errors_name_the_key(completion: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_with(routes=[{"name": "mr", "instruction": "x", "completion": completion}])
    assert message in str(raised.value)


def test_source_completion_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sources\[1\]\.completion\.release_hint:"):
        settings_with(sources=[{"ae_title": "A"}, {"ae_title": "B", "completion": {"release_hint": "often"}}])


# -- the sweep on a real index -------------------------------------------------------------------------


class Planner:
    """Stands in for the node: records plan requests and makes one job per request, as plan_study would."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.requests: list[PlanRequest] = []
        self.fail = False

    def __call__(self, request: PlanRequest) -> None:
        if self.fail:
            raise RuntimeError("planning failed")
        self.requests.append(request)
        self.index.create_job(
            job_id=f"job{len(self.requests)}",
            study_instance_uid=request.study_instance_uid,
            series_instance_uid=(request.series_instance_uids or (SERIES_A,))[0],
            route=request.route,
            instruction="Describe the image",
            destinations=[],
            plan={"thoughts": "", "actions": [], "value": ""},
        )


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite3")


def receive(
    index: Index,
    series_instance_uid: str,
    number: int,
    *,
    association_id: str | None = None,
    calling_ae_title: str = "STORESCU",
    route: str | None = "mr",
    age: float = 0.0,
    content_hash: str | None = None,
) -> None:
    """Index instance ``number`` of a series as the SCP does; ``age`` seconds moves its arrival back."""
    sop_instance_uid = f"{series_instance_uid}.{number}"
    index.record_instance(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        study_instance_uid=STUDY,
        series_instance_uid=series_instance_uid,
        modality="MR",
        path=f"/spool/{sop_instance_uid}.dcm",
        size=1,
        association_id=association_id,
        calling_ae_title=calling_ae_title,
        attributes={"Modality": "MR"},
        route=route,
        quiet_seconds=5.0,
        content_hash=content_hash,
    )
    if age:
        index.query(
            "UPDATE instances SET received_at = received_at - ? WHERE sop_instance_uid=?",
            (age, sop_instance_uid),
        )


def study_state(index: Index) -> str:
    return index.study(STUDY)["state"]


def test_quiet_period_completes_a_study_once_and_plans_every_series(index: Index) -> None:
    settings = settings_with()
    planner = Planner(index)
    for number in (1, 2):
        receive(index, SERIES_A, number)
    receive(index, SERIES_B, 1)
    start = time.time()
    assert sweep(settings, index, planner, now=start + 1) == []
    assert study_state(index) == "receiving"
    [unit] = sweep(settings, index, planner, now=start + 6)
    assert unit.reason is Completion.QUIET and unit.series_instance_uids == (SERIES_A, SERIES_B)
    assert planner.requests == [PlanRequest(STUDY, "mr", GroupBy.STUDY, None, "", Completion.QUIET)]
    assert study_state(index) == "complete"
    recorded = {row["series_instance_uid"]: row for row in index.series_completions(STUDY)}
    assert recorded[SERIES_A]["instance_digest"] == instance_set_digest([f"{SERIES_A}.1:", f"{SERIES_A}.2:"])
    assert (recorded[SERIES_A]["instances"], recorded[SERIES_A]["reason"]) == (2, "quiet")
    assert sweep(settings, index, planner, now=start + 60) == []
    assert len(planner.requests) == 1


def test_release_hint_counts_only_once_every_delivering_association_is_released(index: Index) -> None:
    settings = settings_with(
        routes=[
            {
                "name": "mr",
                "instruction": "x",
                "completion": {"quiet_seconds": 30, "release_quiet_seconds": 1},
            }
        ]
    )
    planner = Planner(index)
    for association_id in ("first", "second"):
        index.open_association(association_id, "STORESCU", "MEDAGENT", "127.0.0.1:1")
    receive(index, SERIES_A, 1, association_id="first")
    receive(index, SERIES_A, 2, association_id="second")
    index.close_association("first", "released")
    assert sweep(settings, index, planner, now=time.time() + 2) == []  # "second" is still open
    index.close_association("second", "released")
    [unit] = sweep(settings, index, planner, now=time.time() + 1.01)
    assert unit.reason is Completion.RELEASE


def test_aborted_association_is_no_hint(index: Index) -> None:
    settings = settings_with(routes=[{"name": "mr", "instruction": "x", "completion": {"quiet_seconds": 30}}])
    index.open_association("only", "STORESCU", "MEDAGENT", "127.0.0.1:1")
    receive(index, SERIES_A, 1, association_id="only")
    index.close_association("only", "aborted")
    assert sweep(settings, index, Planner(index), now=time.time() + 5) == []


def test_expected_series_completes_soon_after_the_last_expected_series_arrives(index: Index) -> None:
    settings = settings_with(
        routes=[
            {
                "name": "mr",
                "instruction": "x",
                "completion": {"quiet_seconds": 30, "release_hint": False, "expected_series": 2},
            }
        ]
    )
    planner = Planner(index)
    receive(index, SERIES_A, 1)
    assert sweep(settings, index, planner, now=time.time() + 2) == []
    receive(index, SERIES_B, 1)
    [unit] = sweep(settings, index, planner, now=time.time() + 1.01)
    assert unit.reason is Completion.EXPECTED_SERIES


def test_force_complete_counts_from_the_first_instance_since_the_last_completion(index: Index) -> None:
    settings = settings_with(
        routes=[
            {
                "name": "mr",
                "instruction": "x",
                "completion": {"quiet_seconds": 30, "release_hint": False, "force_complete_seconds": 40},
            }
        ]
    )
    planner = Planner(index)
    receive(index, SERIES_A, 1, age=100)
    [unit] = sweep(settings, index, planner)
    assert unit.reason is Completion.QUIET
    # it grows and never goes quiet: instances 15 s ago and now
    receive(index, SERIES_A, 2, age=15)
    receive(index, SERIES_A, 3)
    # 100 s after the study's first instance but 15 s after the growth's first: not yet
    assert sweep(settings, index, planner, now=time.time() + 20) == []
    [unit] = sweep(settings, index, planner, now=time.time() + 26)
    assert unit.reason is Completion.FORCED
    assert unit.plan is not None and unit.plan.series_instance_uids == (SERIES_A,)


def test_growth_new_job_plans_only_the_changed_series_and_a_resend_plans_nothing(index: Index) -> None:
    settings = settings_with()
    planner = Planner(index)
    receive(index, SERIES_A, 1)
    receive(index, SERIES_B, 1)
    sweep(settings, index, planner, now=time.time() + 6)
    receive(index, SERIES_B, 2)
    receive(index, SERIES_A, 1)  # an identical resend in the other series
    [unit] = sweep(settings, index, planner, now=time.time() + 6)
    assert unit.plan == PlanRequest(STUDY, "mr", GroupBy.STUDY, (SERIES_B,), "", Completion.QUIET)
    receive(index, SERIES_B, 2)  # identical resend only
    completed = sweep(settings, index, planner, now=time.time() + 6)
    assert [unit.plan for unit in completed] in ([], [None])
    assert len(planner.requests) == 2
    assert study_state(index) == "complete"


@pytest.mark.parametrize("on_growth", ["reprocess", "ignore"])
def test_growth_reprocess_and_ignore(index: Index, on_growth: str) -> None:
    settings = settings_with(
        routes=[{"name": "mr", "instruction": "x", "completion": {"on_growth": on_growth}}]
    )
    planner = Planner(index)
    receive(index, SERIES_A, 1)
    sweep(settings, index, planner, now=time.time() + 6)
    receive(index, SERIES_B, 1)
    [unit] = sweep(settings, index, planner, now=time.time() + 6)
    if on_growth == "ignore":
        assert unit.plan is None and len(planner.requests) == 1
    else:
        expected_revision = instance_set_digest([f"{SERIES_A}.1:", f"{SERIES_B}.1:"])
        assert unit.plan == PlanRequest(STUDY, "mr", GroupBy.STUDY, None, expected_revision, Completion.QUIET)
    assert len(index.series_completions(STUDY)) == 2


def test_group_by_series_completes_each_series_on_its_own_timers(index: Index) -> None:
    settings = settings_with(
        routes=[{"name": "mr", "instruction": "x", "completion": {"quiet_seconds": 5, "group_by": "series"}}]
    )
    planner = Planner(index)
    receive(index, SERIES_A, 1, age=10)
    receive(index, SERIES_B, 1)
    [unit] = sweep(settings, index, planner, now=time.time() + 1)
    assert unit.series_instance_uids == (SERIES_A,)
    assert planner.requests[0].series_instance_uids == (SERIES_A,)
    assert planner.requests[0].group_by is GroupBy.SERIES
    assert study_state(index) == "receiving"
    [unit] = sweep(settings, index, planner, now=time.time() + 6)
    assert unit.series_instance_uids == (SERIES_B,)
    assert study_state(index) == "complete"
    # growth of one series is growth of that series only
    receive(index, SERIES_B, 2)
    [unit] = sweep(settings, index, planner, now=time.time() + 6)
    assert unit.plan is not None and unit.plan.series_instance_uids == (SERIES_B,)


def test_process_now_request_completes_at_the_next_sweep_and_is_cleared(index: Index) -> None:
    settings = settings_with(
        routes=[{"name": "mr", "instruction": "x", "completion": {"quiet_seconds": 3600}}]
    )
    planner = Planner(index)
    assert index.request_processing(STUDY) is False  # not indexed yet
    receive(index, SERIES_A, 1)
    assert index.request_processing(STUDY) is True
    [unit] = sweep(settings, index, planner, now=time.time())
    assert unit.reason is Completion.MANUAL
    assert index.studies_to_check() == []
    assert index.request_processing(STUDY) is True  # again, with nothing new: no unit, request cleared
    assert sweep(settings, index, planner) == []
    assert index.studies_to_check() == []


def test_unrouted_study_is_completed_without_planning(index: Index) -> None:
    planner = Planner(index)
    receive(index, SERIES_A, 1, route=None)
    [unit] = sweep(settings_with(), index, planner, now=time.time() + 6)
    assert unit.plan is None and planner.requests == []
    assert study_state(index) == "unrouted"


def test_source_override_applies_to_the_study_of_that_calling_ae(index: Index) -> None:
    settings = settings_with(
        sources=[{"ae_title": "PACS", "completion": {"quiet_seconds": 1}}],
        routes=[{"name": "mr", "instruction": "x", "completion": {"quiet_seconds": 60}}],
    )
    receive(index, SERIES_A, 1, calling_ae_title="PACS")
    [unit] = sweep(settings, index, Planner(index), now=time.time() + 1.5)
    assert unit.reason is Completion.QUIET


def test_a_planning_failure_leaves_the_study_pending_and_is_tried_again(index: Index) -> None:
    settings = settings_with()
    planner = Planner(index)
    planner.fail = True
    receive(index, SERIES_A, 1)
    assert sweep(settings, index, planner, now=time.time() + 6) == []
    assert study_state(index) == "receiving" and index.series_completions(STUDY) == []
    planner.fail = False
    [unit] = sweep(settings, index, planner, now=time.time() + 6)
    assert unit.plan is not None and study_state(index) == "complete"


def test_time_the_node_was_down_does_not_count_as_quiet(index: Index) -> None:
    settings = settings_with()
    planner = Planner(index)
    receive(index, SERIES_A, 1, age=100)  # arrived before the node went down for a while
    restarted = time.time()
    assert sweep(settings, index, planner, now=restarted + 1, listening_since=restarted) == []
    [unit] = sweep(settings, index, planner, now=restarted + 5.01, listening_since=restarted)
    assert unit.reason is Completion.QUIET


def test_a_new_version_of_an_instance_counts_as_a_change(index: Index) -> None:
    settings = settings_with()
    planner = Planner(index)
    receive(index, SERIES_A, 1, content_hash="first")
    sweep(settings, index, planner, now=time.time() + 6)
    receive(index, SERIES_A, 1, content_hash="first")  # identical resend
    assert sweep(settings, index, planner, now=time.time() + 6)[0].plan is None
    receive(index, SERIES_A, 1, content_hash="corrected")  # same SOP Instance UID, new content
    [unit] = sweep(settings, index, planner, now=time.time() + 6)
    assert unit.plan is not None and len(planner.requests) == 2
