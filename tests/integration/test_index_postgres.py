"""The index on PostgreSQL: the same tables and the same behaviour as on SQLite, shared by several listeners.

Needs the PostgreSQL server on 127.0.0.1:5432 (``MEDAGENT_TEST_POSTGRES_URL`` names another one: the URL of
a database from which the user may ``CREATE DATABASE``); each test database gets a unique name and is
dropped at the end. Every index method the node uses runs on both databases with the same assertions; the
completion sweep tests of ``tests/unit/dicom_node/test_tracker.py`` run again on PostgreSQL; processes write
one study at once; two SCP listeners share one index; a node with its index on PostgreSQL receives a study
from DCMTK storescu, runs its job in its worker process and delivers the result to DCMTK storescp.
"""

from __future__ import annotations

import inspect
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pydicom
import pytest
import yaml
from psycopg import sql

from config.settings import redact_url
from dicom_node.index import Index, index_location, open_index
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.conftest import node_settings, running_node
from tests.helpers.peers import PEER_ENVIRONMENT, free_port, run_dcmtk, shared_data, wait_until
from tests.unit.dicom_node import test_tracker as tracker_tests

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get("MEDAGENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLES = (
    "studies",
    "series_completions",
    "processing_requests",
    "instances",
    "associations",
    "jobs",
    "actions",
    "outputs",
    "deliveries",
    "commitments",
)


def _unreachable() -> str | None:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5):
            return None
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__


_WHY_UNREACHABLE = _unreachable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        _WHY_UNREACHABLE is not None,
        reason=f"PostgreSQL is not reachable at {redact_url(ADMIN_URL)}: {_WHY_UNREACHABLE}",
    ),
]


#: A collation that ignores punctuation (ICU "alternate shifted"), as many a server's en_US default does:
#: under it "1.23" sorts before "1.2.4", which byte order (SQLite's) puts the other way round.
PUNCTUATION_BLIND = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und-u-ka-shifted' LOCALE 'C.UTF-8'"


@contextmanager
def fresh_database(options: str = "") -> Iterator[str]:
    """The URL of a new, empty database, dropped (with any connection still open to it) at the end."""
    name = f"medagent_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} " + options).format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database(PUNCTUATION_BLIND) as url:
        yield url


@pytest.fixture
def pg_index(database_url: str) -> Iterator[Index]:
    """An index on the module's database with every table emptied."""
    index = Index(database_url)
    index.query("TRUNCATE " + ", ".join(TABLES))
    try:
        yield index
    finally:
        index.close()


@pytest.fixture
def index(pg_index: Index) -> Index:
    """The tracker tests' ``index`` fixture, on PostgreSQL."""
    return pg_index


@pytest.fixture(params=["sqlite", "postgresql"])
def any_index(request: pytest.FixtureRequest, tmp_path: Path) -> Index:
    if request.param == "sqlite":
        return Index(tmp_path / "index.sqlite3")
    return request.getfixturevalue("pg_index")


# The completion sweep tests, run on PostgreSQL: every test of test_tracker.py that takes the ``index``
# fixture is collected here again, where ``index`` is the PostgreSQL fixture above.
for _name, _test in vars(tracker_tests).items():
    if _name.startswith("test_") and "index" in inspect.signature(_test).parameters:
        globals()[f"{_name}_on_postgresql"] = _test


def record(index: Index, sop_instance_uid: str, **values: object) -> None:
    """Index one MR instance of study 1.2.3, series 1.2.3.1 unless ``values`` say otherwise."""
    arguments: dict[str, object] = {
        "sop_instance_uid": sop_instance_uid,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.1",
        "modality": "MR",
        "path": f"/spool/{sop_instance_uid}.dcm",
        "size": 1000,
        "association_id": None,
        "calling_ae_title": "STORESCU",
        "attributes": {"Modality": "MR"},
        "route": "mr",
        "quiet_seconds": 5.0,
    }
    arguments.update(values)
    index.record_instance(**arguments)  # type: ignore[arg-type]


# -- the schema -------------------------------------------------------------------------------------


def test_postgresql_tables_have_the_sqlite_columns_keys_and_value_kinds(
    pg_index: Index, tmp_path: Path
) -> None:
    lite = sqlite3.connect(Index(tmp_path / "index.sqlite3").path)
    kinds = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text"}
    for table in TABLES:
        expected = [
            (name, kinds[kind], bool(pk))
            for _, name, kind, _, _, pk in lite.execute(f"PRAGMA table_info({table})")
        ]
        rows = pg_index.query(
            "SELECT c.column_name, c.data_type, c.collation_name,"
            " EXISTS (SELECT 1 FROM information_schema.key_column_usage k"
            "   JOIN information_schema.table_constraints t USING (constraint_name, table_name)"
            "   WHERE t.constraint_type='PRIMARY KEY' AND k.table_name=c.table_name"
            "   AND k.column_name=c.column_name) AS primary_key"
            " FROM information_schema.columns c WHERE c.table_name=? ORDER BY c.ordinal_position",
            (table,),
        )
        assert [(r["column_name"], r["data_type"], r["primary_key"]) for r in rows] == expected, table
        assert {r["collation_name"] for r in rows if r["data_type"] == "text"} <= {"C"}, table
    indexes = pg_index.query("SELECT indexname FROM pg_indexes WHERE tablename='instances'")
    assert "instances_by_study" in {r["indexname"] for r in indexes}


def test_processes_opening_a_new_database_at_once_create_the_tables_once() -> None:
    context = get_context("spawn")
    with (
        fresh_database() as url,
        context.Manager() as manager,
        ProcessPoolExecutor(4, mp_context=context) as pool,
    ):
        start_together = manager.Barrier(4)
        assert list(pool.map(_open_and_count_tables, [url] * 4, [start_together] * 4)) == [len(TABLES)] * 4
        assert _open_and_count_tables(url) == len(TABLES)


def _open_and_count_tables(url: str, start_together: Any = None) -> int:
    if start_together is not None:
        start_together.wait(timeout=120)
    index = Index(url)
    rows = index.query(
        "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema='public' AND table_name IN ("
        + ",".join("?" * len(TABLES))
        + ")",
        TABLES,
    )
    index.close()
    return rows[0]["n"]


# -- index methods, the same assertions on both databases ---------------------------------------------


def test_rows_read_by_name_position_keys_dict_and_tuple(any_index: Index) -> None:
    record(any_index, "1.2.3.1.1", size=5 * 1024**3)  # a whole-slide image can pass 2 GiB
    row = any_index.instance("1.2.3.1.1")
    assert row["sop_instance_uid"] == row[0] == "1.2.3.1.1"
    assert row["SOP_INSTANCE_UID"] == "1.2.3.1.1"  # names are case-insensitive, as on sqlite3.Row
    assert row["size"] == 5 * 1024**3 and isinstance(row["received_at"], float)
    assert list(row.keys())[:3] == ["sop_instance_uid", "sop_class_uid", "study_instance_uid"]
    assert dict(row)["attributes"] == '{"Modality": "MR"}' and tuple(row)[0] == "1.2.3.1.1"
    with pytest.raises(IndexError):
        row["no_such_column"]
    assert any_index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 1
    assert any_index.query("SELECT COUNT(*) FROM instances")[0][0] == 1
    assert any_index.query("UPDATE instances SET modality='CT'") == []  # no rows, as sqlite3 answers
    assert any_index.query("SELECT '100%' AS a, '?' AS b, ? AS c", ("x",))[0][:] == ("100%", "?", "x")


def test_a_new_version_counts_and_the_study_reopens_keeping_its_route(any_index: Index) -> None:
    record(any_index, "1.2.3.1.1", content_hash="a" * 64, transfer_syntax_uid="1.2.840.10008.1.2.1")
    first = dict(any_index.instance("1.2.3.1.1"))
    study = any_index.study("1.2.3")
    assert (study["state"], study["route"], study["quiet_seconds"]) == ("receiving", "mr", 5.0)
    assert any_index.mark_study("1.2.3", "complete", study["last_received_at"] - 1) is False  # stale read
    assert any_index.mark_study("1.2.3", "complete", study["last_received_at"]) is True  # times round-trip
    time.sleep(0.01)
    record(any_index, "1.2.3.1.1", content_hash="b" * 64, size=2000, route=None, quiet_seconds=60.0)
    second = any_index.instance("1.2.3.1.1")
    assert second["versions"] == 2 and second["content_hash"] == "b" * 64 and second["size"] == 2000
    assert second["received_at"] > first["received_at"]
    study = any_index.study("1.2.3")
    assert (study["state"], study["route"], study["quiet_seconds"]) == ("receiving", "mr", 5.0)
    assert any_index.mark_study("1.2.3", "unrouted", study["last_received_at"]) is True
    assert any_index.mark_study("1.2.3", "complete", study["last_received_at"]) is False  # not receiving


def test_instances_sort_by_uid_bytes_as_sqlite_does(any_index: Index) -> None:
    if any_index.path is None:  # the database's own collation would sort these UIDs differently
        assert any_index.query("SELECT '1.2.3.1.23' < '1.2.3.1.2.4' AS blind")[0]["blind"] is True
    uids = ["1.2.3.1.10", "1.2.3.1.9", "1.2.3.1.1.0", "1.2.3.1.1", "1.2.3.1.100", "1.2.3.1.23", "1.2.3.1.2.4"]
    for uid in uids:
        record(any_index, uid)
    record(any_index, "1.2.3.2.1", series_instance_uid="1.2.3.2")
    assert [r["sop_instance_uid"] for r in any_index.instances_of_series("1.2.3.1")] == sorted(uids)
    assert [r["sop_instance_uid"] for r in any_index.instances_of_study("1.2.3")] == [
        *sorted(uids),
        "1.2.3.2.1",
    ]


def test_association_audit(any_index: Index) -> None:
    any_index.open_association("a", "STORESCU", "MEDAGENT", "127.0.0.1:1000")
    any_index.open_association("b", "STORESCU", "OTHER", "127.0.0.1:1001")
    record(any_index, "1.2.3.1.1", association_id="a")
    record(any_index, "1.2.3.1.2", association_id="a")
    any_index.close_association("a", "released", duplicates=3, failed=1)
    any_index.close_association("a", "released", duplicates=1, detail="again")
    row = any_index.query("SELECT * FROM associations WHERE association_id='a'")[0]
    assert (row["outcome"], row["instances"], row["duplicates"], row["failed"], row["detail"]) == (
        "released",
        2,
        4,
        1,
        "again",
    )
    assert row["ended_at"] >= row["started_at"]
    # the same id opened again starts a fresh audit row, as SQLite's INSERT OR REPLACE did
    any_index.open_association("a", "PACS", "MEDAGENT", "10.0.0.1:104")
    row = any_index.query("SELECT * FROM associations WHERE association_id='a'")[0]
    assert (row["calling_ae_title"], row["outcome"], row["instances"], row["duplicates"]) == (
        "PACS",
        "open",
        0,
        0,
    )
    assert (row["failed"], row["detail"], row["ended_at"]) == (0, None, None)
    assert any_index.interrupt_open_associations("MEDAGENT") == 1
    assert any_index.interrupt_open_associations("MEDAGENT") == 0
    outcomes = {r["association_id"]: r["outcome"] for r in any_index.query("SELECT * FROM associations")}
    assert outcomes == {"a": "interrupted", "b": "open"}


def test_completion_records_progress_and_process_now(any_index: Index) -> None:
    any_index.open_association("a", "STORESCU", "MEDAGENT", "127.0.0.1:1000")
    any_index.open_association("b", "STORESCU", "MEDAGENT", "127.0.0.1:1001")
    record(any_index, "1.2.3.1.1", association_id="a")
    record(any_index, "1.2.3.1.2", association_id="b")
    record(any_index, "1.2.3.2.1", series_instance_uid="1.2.3.2", association_id="a")
    any_index.close_association("a", "released")
    progress = {r["series_instance_uid"]: r for r in any_index.series_progress("1.2.3")}
    assert progress["1.2.3.1"]["instances"] == 2 and progress["1.2.3.1"]["open_associations"] == 1
    assert progress["1.2.3.2"]["open_associations"] == 0 and progress["1.2.3.2"]["released_at"] is not None
    assert progress["1.2.3.1"]["first_pending_at"] == progress["1.2.3.1"]["first_received_at"]
    covered = progress["1.2.3.1"]["last_received_at"]
    any_index.record_completion("1.2.3", [("1.2.3.1", "digest-1", 2, covered)], "quiet")
    any_index.record_completion("1.2.3", [("1.2.3.1", "digest-2", 2, covered)], "manual")  # replaces
    [completion] = any_index.series_completions("1.2.3")
    assert (completion["instance_digest"], completion["reason"]) == ("digest-2", "manual")
    progress = {r["series_instance_uid"]: r for r in any_index.series_progress("1.2.3")}
    assert (
        progress["1.2.3.1"]["first_pending_at"] is None
        and progress["1.2.3.1"]["instance_digest"] == "digest-2"
    )

    assert [r["study_instance_uid"] for r in any_index.studies_to_check()] == ["1.2.3"]
    study = any_index.study("1.2.3")
    assert any_index.mark_study("1.2.3", "complete", study["last_received_at"])
    assert any_index.studies_to_check() == [] and any_index.studies_to_check("1.2.3") == []
    assert any_index.request_processing("9.9.9") is False
    assert any_index.request_processing("1.2.3") is True
    [requested] = any_index.studies_to_check("1.2.3")
    time.sleep(0.01)
    assert any_index.request_processing("1.2.3") is True  # asked again: a newer request
    any_index.clear_processing_request("1.2.3", requested["requested_at"])  # the older one: kept
    [again] = any_index.studies_to_check()
    assert again["requested_at"] > requested["requested_at"]
    any_index.clear_processing_request("1.2.3", again["requested_at"])
    assert any_index.studies_to_check() == []


def test_jobs_and_actions(any_index: Index) -> None:
    plan = {"thoughts": "t", "actions": [{"API_name": "classification"}, {"API_name": "vqa"}], "value": "v"}
    job = {
        "job_id": "job-1",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.1",
        "route": "mr",
        "instruction": "What is this?",
        "destinations": ["pacs"],
    }
    assert any_index.create_job(**job, plan=plan) is True
    assert any_index.create_job(**job, plan={"actions": [{"API_name": "grounding"}]}) is False  # idempotent
    assert [a["api_name"] for a in any_index.actions("job-1")] == ["classification", "vqa"]
    time.sleep(0.01)
    assert any_index.create_job(**{**job, "job_id": "job-2"}, plan={"actions": []}) is True
    row = any_index.job("job-1")
    assert json.loads(row["plan"]) == plan and json.loads(row["destinations"]) == ["pacs"]
    assert (row["state"], row["error"]) == ("queued", None) and any_index.job("nope") is None
    assert [j["job_id"] for j in any_index.jobs()] == ["job-1", "job-2"]
    assert [j["job_id"] for j in any_index.jobs_of_study("1.2.3")] == ["job-1", "job-2"]
    any_index.set_job_state("job-1", "running")
    any_index.set_action_state("job-1", 0, "running")
    running = any_index.actions("job-1")[0]
    assert running["state"] == "running" and running["started_at"] is not None
    any_index.set_action_state("job-1", 0, "ok", engine="DICOM header")
    any_index.set_action_state("job-1", 1, "failed", error="it broke")
    [ok, failed] = any_index.actions("job-1")
    assert (ok["state"], ok["engine"], ok["finished_at"] >= ok["started_at"]) == ("ok", "DICOM header", True)
    assert (failed["state"], failed["error"]) == ("failed", "it broke")
    any_index.set_job_state("job-1", "failed", "vqa failed")
    assert [j["job_id"] for j in any_index.jobs("failed")] == ["job-1"]
    assert any_index.job("job-1")["error"] == "vqa failed"
    assert any_index.create_job(**{**job, "job_id": "job-3"}, plan={"actions": []}, planning_started_at=12.5)
    any_index.finish_encoding("job-3", "done", None, started_at=13.5)
    encoded = any_index.job("job-3")
    assert encoded["state"] == "done" and encoded["planning_started_at"] == 12.5
    assert encoded["encoding_started_at"] == 13.5
    assert encoded["encoding_finished_at"] == encoded["updated_at"] >= encoded["created_at"]


def test_outputs_and_the_outbox(any_index: Index) -> None:
    def output(uid: str, destinations: list[str], kind: str = "SR") -> None:
        any_index.record_output(
            sop_instance_uid=uid,
            job_id="job-1",
            kind=kind,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
            path=f"/outputs/{uid}.dcm",
            destinations=destinations,
        )

    output("9.1", ["pacs", "archive"])
    output("9.2", ["pacs"], kind="SEG")
    now = time.time() + 1
    due = any_index.due_deliveries(now)
    assert {(d["sop_instance_uid"], d["destination"], d["kind"]) for d in due} == {
        ("9.1", "pacs", "SR"),
        ("9.1", "archive", "SR"),
        ("9.2", "pacs", "SEG"),
    }
    assert due[0]["path"].startswith("/outputs/") and len(any_index.due_deliveries(now, limit=2)) == 2
    any_index.update_delivery("9.1", "pacs", state="delivered", status=0, error=None, next_attempt_at=now)
    any_index.update_delivery(
        "9.1", "archive", state="pending", status=0xA700, error="full", next_attempt_at=now + 60
    )
    first_try = any_index.deliveries("9.1")
    any_index.update_delivery(
        "9.1", "archive", state="dead", status=0xA700, error="full", next_attempt_at=now + 60
    )
    output("9.1", ["pacs", "archive"])  # the same object recorded again (a redelivered task)
    rows = {r["destination"]: r for r in any_index.deliveries("9.1")}
    assert (rows["pacs"]["state"], rows["pacs"]["attempts"], rows["pacs"]["last_status"]) == (
        "delivered",
        1,
        0,
    )
    assert rows["pacs"]["delivered_at"] is not None
    assert (rows["archive"]["state"], rows["archive"]["attempts"], rows["archive"]["last_error"]) == (
        "dead",
        2,
        "full",
    )
    archive_first = next(r for r in first_try if r["destination"] == "archive")
    assert rows["archive"]["first_attempt_at"] == archive_first["first_attempt_at"]
    assert rows["archive"]["delivered_at"] is None
    assert [(d["sop_instance_uid"], d["destination"]) for d in any_index.due_deliveries(now + 3600)] == [
        ("9.2", "pacs")
    ]
    assert [o["kind"] for o in any_index.outputs("job-1")] == ["SEG", "SR"] and len(any_index.outputs()) == 2
    assert len(any_index.deliveries()) == 3

    assert any_index.resubmit_deliveries(destination="pacs") == 0  # nothing dead there
    assert any_index.resubmit_deliveries(sop_instance_uid="9.1", states=("dead", "delivered")) == 2
    again = {r["destination"]: r for r in any_index.deliveries("9.1")}
    assert {r["state"] for r in again.values()} == {"pending"} and again["archive"]["attempts"] == 0
    assert again["archive"]["first_attempt_at"] is None


def test_storage_commitment(any_index: Index) -> None:
    any_index.record_commitment_request("tx-1", "pacs", ["9.1", "9.2", "9.3"])
    assert any_index.record_commitment_result("tx-unknown", ["9.1"], {}, time.time()) is False
    assert any_index.record_commitment_result("tx-1", ["9.1", "9.2"], {"9.3": 0x0110}, time.time()) is True
    states = {c["sop_instance_uid"]: (c["state"], c["failure_reason"]) for c in any_index.commitments()}
    assert states == {"9.1": ("committed", None), "9.2": ("committed", None), "9.3": ("failed", 0x0110)}
    any_index.record_commitment_request("tx-1", "pacs", ["9.3"])  # asked again: requested anew
    [row] = any_index.commitments("9.3")
    assert (row["state"], row["failure_reason"], row["answered_at"]) == ("requested", None, None)
    any_index.record_commitment_request("tx-2", "pacs", ["9.4"])
    any_index.forget_commitment_request("tx-1")
    assert [c["transaction_uid"] for c in any_index.commitments()] == ["tx-2"]


def test_a_failed_transaction_leaves_nothing_and_the_index_stays_usable(any_index: Index) -> None:
    with pytest.raises(RuntimeError), any_index.connect() as connection:
        connection.execute("INSERT INTO processing_requests VALUES (?,?)", ("1.2.3", 1.0))
        raise RuntimeError("the caller failed half way")
    assert any_index.query("SELECT * FROM processing_requests") == []
    with pytest.raises((sqlite3.Error, psycopg.Error)):
        any_index.query("SELECT no_such_column FROM studies")
    record(any_index, "1.2.3.1.1")
    assert len(any_index.instances_of_study("1.2.3")) == 1


# -- several writers, several listeners ---------------------------------------------------------------


def _record_many(location: str, writer: int, count: int) -> int:
    index = Index(location)
    for number in range(count):
        record(index, f"1.2.3.1.{writer}.{number}", association_id="shared")
        record(index, "1.2.3.1.0", association_id="shared", content_hash=f"{writer}-{number}")
    index.close()
    return writer


def test_processes_writing_one_study_at_once_lose_no_update(pg_index: Index, database_url: str) -> None:
    pg_index.open_association("shared", "STORESCU", "MEDAGENT", "127.0.0.1:1000")
    writers, count = 4, 25
    with ProcessPoolExecutor(writers, mp_context=get_context("spawn")) as pool:
        assert sorted(
            pool.map(_record_many, [database_url] * writers, range(writers), [count] * writers)
        ) == [
            0,
            1,
            2,
            3,
        ]
    assert len(pg_index.instances_of_study("1.2.3")) == writers * count + 1
    assert pg_index.instance("1.2.3.1.0")["versions"] == writers * count  # every new version counted
    association = pg_index.query("SELECT instances FROM associations WHERE association_id='shared'")[0]
    assert association["instances"] == 2 * writers * count
    assert len(pg_index.query("SELECT * FROM studies")) == 1


def test_two_indexes_on_one_database_see_each_others_rows(database_url: str, pg_index: Index) -> None:
    first, second = Index(database_url), Index(database_url)
    record(first, "1.2.3.1.1")
    assert second.instance("1.2.3.1.1")["path"] == "/spool/1.2.3.1.1.dcm"
    assert second.create_job(
        job_id="j",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        route="mr",
        instruction="x",
        destinations=[],
        plan={"actions": [{"API_name": "vqa"}]},
    )
    assert first.job("j")["state"] == "queued" and first.actions("j")[0]["api_name"] == "vqa"
    first.set_action_state("j", 0, "ok", engine="e")
    assert second.actions("j")[0]["engine"] == "e"
    assert repr(first) == f"Index(url={database_url!r})" and first.path is None


def _send(port: int, files: list[Path]) -> None:
    sent = run_dcmtk(
        "storescu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(port), *map(str, files)
    )
    assert sent.returncode == 0, sent.stderr


def test_two_listeners_share_one_index(tmp_path: Path, pg_index: Index, database_url: str) -> None:
    files = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))[:6]
    listeners = []
    for name in ("east", "west"):
        storage = tmp_path / name
        settings = node_settings(storage, index={"url": database_url}).with_absolute_storage()
        listeners.append(StorageSCP(settings, open_index(settings), Spool(storage)))
    for listener in listeners:
        listener.start()
    try:
        _send(listeners[0].port, files[:3])
        _send(listeners[1].port, files[3:])
        wait_until(
            lambda: len(pg_index.query("SELECT * FROM associations WHERE outcome='released'")) == 2,
            timeout=30,
            what="both associations to be released",
        )
    finally:
        for listener in listeners:
            listener.stop()
    study_instance_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    for listener in listeners:
        rows = listener.index.instances_of_study(study_instance_uid)
        assert len(rows) == 6
        assert {Path(r["path"]).relative_to(tmp_path).parts[0] for r in rows} == {"east", "west"}
    audit = pg_index.query("SELECT called_ae_title, instances FROM associations ORDER BY started_at")
    assert [tuple(r) for r in audit] == [("MEDAGENT", 3), ("MEDAGENT", 3)]
    assert not (tmp_path / "east" / "index.sqlite3").exists()


# -- the node and the command line ----------------------------------------------------------------------


def test_settings_name_the_index(tmp_path: Path, database_url: str) -> None:
    sqlite_settings = node_settings(tmp_path / "node").with_absolute_storage()
    assert index_location(sqlite_settings) == tmp_path / "node" / "index.sqlite3"
    settings = node_settings(tmp_path / "node", index={"url": database_url})
    assert index_location(settings) == database_url
    assert repr(open_index(settings)) == f"Index(url={database_url!r})"


def test_process_now_from_the_command_line_reaches_the_postgresql_index(
    tmp_path: Path, pg_index: Index, database_url: str
) -> None:
    record(pg_index, "1.2.3.1.1")
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump({"node": {"storage": str(tmp_path / "var")}, "index": {"url": database_url}})
    )

    def process_now(study_instance_uid: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "dicom_node.cli",
                "process-now",
                study_instance_uid,
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )

    done = process_now("1.2.3")
    assert done.returncode == 0, done.stderr
    assert [r["study_instance_uid"] for r in pg_index.query("SELECT * FROM processing_requests")] == ["1.2.3"]
    unknown = process_now("9.9.9")
    assert unknown.returncode == 1 and redact_url(database_url) in unknown.stderr
    assert not (tmp_path / "var" / "index.sqlite3").exists()


@contextmanager
def _storescp(folder: Path, port: int) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(folder), "+xa", str(port)],
        env=PEER_ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: run_dcmtk("echoscu", "-aec", "PACS", "127.0.0.1", str(port), timeout=10).returncode == 0,
            timeout=15,
            what="storescp",
        )
        yield folder
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_node_with_the_postgresql_index_receives_a_study_runs_its_job_and_delivers(
    tmp_path: Path, pg_index: Index, database_url: str
) -> None:
    pacs_port = free_port()
    settings = node_settings(
        tmp_path / "node",
        index={"url": database_url},
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
        routes=[
            {
                "name": "mr",
                "match": {"Modality": "MR"},
                "instruction": "What kind of image is this?",
                "destinations": ["pacs"],
                "completion": {"quiet_seconds": 1},
            }
        ],
    )
    files = sorted(shared_data("mr_brain_t1_sag_siemens").glob("*.dcm"))[:5]
    study_instance_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with _storescp(tmp_path / "pacs", pacs_port) as received, running_node(settings) as node:
        assert repr(node.index) == f"Index(url={database_url!r})"
        _send(node.scp.port, files)
        [job] = wait_until(lambda: pg_index.jobs("done"), timeout=240, interval=0.5, what="the job to finish")
        deliveries = wait_until(
            lambda: (rows := pg_index.deliveries()) and all(r["state"] == "delivered" for r in rows) and rows,
            timeout=60,
            what="the outbox to deliver every output",
        )
    assert job["study_instance_uid"] == study_instance_uid
    assert [(a["api_name"], a["state"]) for a in pg_index.actions(job["job_id"])] == [
        ("classification", "ok")
    ]
    outputs = pg_index.outputs(job["job_id"])  # written by the worker process, read here
    assert [o["kind"] for o in outputs] == ["SR"]
    assert [(d["sop_instance_uid"], d["destination"]) for d in deliveries] == [
        (outputs[0]["sop_instance_uid"], "pacs")
    ]
    [delivered] = list(received.iterdir())
    sr = pydicom.dcmread(delivered)
    assert (sr.SOPInstanceUID, sr.StudyInstanceUID) == (outputs[0]["sop_instance_uid"], study_instance_uid)
    assert len(pg_index.instances_of_study(study_instance_uid)) == 5
    assert pg_index.study(study_instance_uid)["state"] == "complete"
    assert not (tmp_path / "node" / "index.sqlite3").exists()
