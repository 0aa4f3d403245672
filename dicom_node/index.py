"""The node's index: SQLite in WAL mode, one connection per thread.

Tables: ``studies``, ``instances``, ``associations`` (audit), ``jobs``, ``actions``, ``outputs`` and
``deliveries`` (the outbox, one row per object and destination). Times are UNIX seconds (UTC).
The index holds UIDs and non-identifying metadata only; patient data stays in the spooled files.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    calling_ae_title TEXT NOT NULL,
    route TEXT,
    state TEXT NOT NULL,                 -- receiving | complete | unrouted | queued
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    quiet_seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    modality TEXT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    association_id TEXT,
    attributes TEXT NOT NULL             -- JSON of routing keywords (no patient identifiers)
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_instance_uid, series_instance_uid);
CREATE TABLE IF NOT EXISTS associations (
    association_id TEXT PRIMARY KEY,
    calling_ae_title TEXT,
    called_ae_title TEXT,
    address TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    instances INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL                -- open | released | aborted | rejected
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    route TEXT,
    instruction TEXT NOT NULL,
    destinations TEXT NOT NULL,          -- JSON list of destination names
    plan TEXT NOT NULL,                  -- JSON Plan {thoughts, actions, value}
    state TEXT NOT NULL,                 -- queued | running | done | failed
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS actions (
    job_id TEXT NOT NULL,
    action_index INTEGER NOT NULL,
    api_name TEXT NOT NULL,
    state TEXT NOT NULL,                 -- pending | running | ok | unavailable | failed
    engine TEXT,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    PRIMARY KEY (job_id, action_index)
);
CREATE TABLE IF NOT EXISTS outputs (
    sop_instance_uid TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- SEG | SR | SC
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    sop_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,                 -- pending | delivered | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    first_attempt_at REAL,
    last_status INTEGER,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (sop_instance_uid, destination)
);
"""


class Index:
    """Access to the SQLite index at ``path``; safe to share between threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"Index(path={str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one ``BEGIN IMMEDIATE`` transaction, committed on success."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, parameters).fetchall()

    # -- ingest ---------------------------------------------------------------------------------------

    def record_instance(
        self,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        study_instance_uid: str,
        series_instance_uid: str,
        modality: str | None,
        path: str,
        size: int,
        association_id: str | None,
        calling_ae_title: str,
        attributes: dict[str, Any],
        route: str | None,
        quiet_seconds: float,
    ) -> None:
        """Index a spooled instance and (re)open its study for the completion timer."""
        now = time.time()
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(sop_instance_uid) DO UPDATE SET"
                " path=excluded.path, size=excluded.size, received_at=excluded.received_at,"
                " association_id=excluded.association_id, attributes=excluded.attributes",
                (
                    sop_instance_uid,
                    sop_class_uid,
                    study_instance_uid,
                    series_instance_uid,
                    modality,
                    path,
                    size,
                    now,
                    association_id,
                    json.dumps(attributes, sort_keys=True),
                ),
            )
            connection.execute(
                "INSERT INTO studies VALUES (?,?,?,'receiving',?,?,?) ON CONFLICT(study_instance_uid) DO UPDATE"
                " SET last_received_at=excluded.last_received_at, state='receiving',"
                " route=COALESCE(studies.route, excluded.route),"
                " quiet_seconds=CASE WHEN studies.route IS NULL THEN excluded.quiet_seconds"
                " ELSE studies.quiet_seconds END",
                (study_instance_uid, calling_ae_title, route, now, now, quiet_seconds),
            )
            if association_id:
                connection.execute(
                    "UPDATE associations SET instances = instances + 1 WHERE association_id=?",
                    (association_id,),
                )

    def open_association(
        self, association_id: str, calling_ae_title: str, called_ae_title: str, address: str
    ) -> None:
        with self.connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO associations VALUES (?,?,?,?,?,NULL,0,'open')",
                (association_id, calling_ae_title, called_ae_title, address, time.time()),
            )

    def close_association(self, association_id: str, outcome: str) -> None:
        with self.connect() as connection:
            connection.execute(
                "UPDATE associations SET ended_at=?, outcome=? WHERE association_id=?",
                (time.time(), outcome, association_id),
            )

    def due_studies(self, now: float) -> list[sqlite3.Row]:
        """Studies still receiving whose quiet period has passed."""
        return self.query(
            "SELECT * FROM studies WHERE state='receiving' AND last_received_at + quiet_seconds <= ?", (now,)
        )

    def mark_study(self, study_instance_uid: str, state: str, expected_last_received_at: float) -> bool:
        """Move a study out of ``receiving`` unless an instance arrived since it was read."""
        with self.connect() as connection:
            cursor = connection.execute(
                "UPDATE studies SET state=? WHERE study_instance_uid=? AND state='receiving'"
                " AND last_received_at=?",
                (state, study_instance_uid, expected_last_received_at),
            )
            return cursor.rowcount == 1

    def instances_of_study(self, study_instance_uid: str) -> list[sqlite3.Row]:
        return self.query(
            "SELECT * FROM instances WHERE study_instance_uid=? ORDER BY series_instance_uid, sop_instance_uid",
            (study_instance_uid,),
        )

    def instances_of_series(self, series_instance_uid: str) -> list[sqlite3.Row]:
        return self.query(
            "SELECT * FROM instances WHERE series_instance_uid=? ORDER BY sop_instance_uid",
            (series_instance_uid,),
        )

    # -- jobs -----------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        job_id: str,
        study_instance_uid: str,
        series_instance_uid: str,
        route: str | None,
        instruction: str,
        destinations: list[str],
        plan: dict[str, Any],
    ) -> bool:
        """Insert a job and its actions; return False if the job already exists (idempotent)."""
        now = time.time()
        with self.connect() as connection:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO jobs VALUES (?,?,?,?,?,?,?,'queued',?,?,NULL)",
                (
                    job_id,
                    study_instance_uid,
                    series_instance_uid,
                    route,
                    instruction,
                    json.dumps(destinations),
                    json.dumps(plan),
                    now,
                    now,
                ),
            )
            if cursor.rowcount == 0:
                return False
            for index, action in enumerate(plan.get("actions", [])):
                connection.execute(
                    "INSERT INTO actions VALUES (?,?,?,'pending',NULL,NULL,NULL,NULL)",
                    (job_id, index, action["API_name"]),
                )
            return True

    def job(self, job_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM jobs WHERE job_id=?", (job_id,))
        return rows[0] if rows else None

    def jobs(self, state: str | None = None) -> list[sqlite3.Row]:
        if state is None:
            return self.query("SELECT * FROM jobs ORDER BY created_at")
        return self.query("SELECT * FROM jobs WHERE state=? ORDER BY created_at", (state,))

    def set_job_state(self, job_id: str, state: str, error: str | None = None) -> None:
        with self.connect() as connection:
            connection.execute(
                "UPDATE jobs SET state=?, error=?, updated_at=? WHERE job_id=?",
                (state, error, time.time(), job_id),
            )

    def actions(self, job_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM actions WHERE job_id=? ORDER BY action_index", (job_id,))

    def set_action_state(
        self, job_id: str, action_index: int, state: str, engine: str | None = None, error: str | None = None
    ) -> None:
        now = time.time()
        with self.connect() as connection:
            if state == "running":
                connection.execute(
                    "UPDATE actions SET state=?, started_at=?, finished_at=NULL, error=NULL"
                    " WHERE job_id=? AND action_index=?",
                    (state, now, job_id, action_index),
                )
            else:
                connection.execute(
                    "UPDATE actions SET state=?, engine=?, error=?, finished_at=? WHERE job_id=? AND action_index=?",
                    (state, engine, error, now, job_id, action_index),
                )

    # -- outputs and the outbox -----------------------------------------------------------------------

    def record_output(
        self,
        *,
        sop_instance_uid: str,
        job_id: str,
        kind: str,
        sop_class_uid: str,
        path: str,
        destinations: list[str],
    ) -> None:
        """Record an encoded object and queue it once for each destination (idempotent)."""
        now = time.time()
        with self.connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO outputs VALUES (?,?,?,?,?,?)",
                (sop_instance_uid, job_id, kind, sop_class_uid, path, now),
            )
            for destination in destinations:
                connection.execute(
                    "INSERT OR IGNORE INTO deliveries (sop_instance_uid, destination, state, next_attempt_at)"
                    " VALUES (?,?,'pending',?)",
                    (sop_instance_uid, destination, now),
                )

    def outputs(self, job_id: str | None = None) -> list[sqlite3.Row]:
        if job_id is None:
            return self.query("SELECT * FROM outputs ORDER BY created_at")
        return self.query("SELECT * FROM outputs WHERE job_id=? ORDER BY kind", (job_id,))

    def due_deliveries(self, now: float, limit: int = 100) -> list[sqlite3.Row]:
        return self.query(
            "SELECT d.*, o.path, o.sop_class_uid, o.kind FROM deliveries d JOIN outputs o USING (sop_instance_uid)"
            " WHERE d.state='pending' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
            (now, limit),
        )

    def deliveries(self, sop_instance_uid: str | None = None) -> list[sqlite3.Row]:
        if sop_instance_uid is None:
            return self.query("SELECT * FROM deliveries ORDER BY sop_instance_uid, destination")
        return self.query("SELECT * FROM deliveries WHERE sop_instance_uid=?", (sop_instance_uid,))

    def update_delivery(
        self,
        sop_instance_uid: str,
        destination: str,
        *,
        state: str,
        status: int | None,
        error: str | None,
        next_attempt_at: float,
    ) -> None:
        now = time.time()
        with self.connect() as connection:
            connection.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, last_status=?, last_error=?,"
                " next_attempt_at=?, first_attempt_at=COALESCE(first_attempt_at, ?),"
                " delivered_at=CASE WHEN ?='delivered' THEN ? ELSE delivered_at END"
                " WHERE sop_instance_uid=? AND destination=?",
                (state, status, error, next_attempt_at, now, state, now, sop_instance_uid, destination),
            )
