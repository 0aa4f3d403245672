"""The node's index: SQLite in WAL mode (the embedded default), or PostgreSQL shared by several listeners.

Tables: ``studies``, ``instances``, ``associations`` (audit), ``jobs``, ``actions``, ``outputs`` and
``deliveries`` (the outbox, one row per object and destination). Times are UNIX seconds (UTC).
The index holds UIDs and non-identifying metadata only; patient data stays in the spooled files.

``Index(path)`` opens SQLite, one connection per thread; ``Index("postgresql://...")`` opens the same
tables in PostgreSQL (``dicom_node.postgres``), where every call borrows a connection of its own. The SQL
below is written once, with ``?`` placeholders, in the dialect both share; rows read by column name or
position on both. ``open_index(settings)`` opens the index the configuration names (``index.url``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import psycopg

from dicom_node.postgres import (
    SCHEMA_LOCK,
    Connections,
    Row,
    is_postgresql_url,
    postgres_schema,
    redact_url,
)

if TYPE_CHECKING:
    from config import Settings

#: A row of the index: ``row["column"]`` or ``row[0]``, ``keys()``, ``dict(row)``, on either database.
IndexRow: TypeAlias = sqlite3.Row | Row

#: What a failed index call raises, whichever database holds the index (network handlers catch these).
INDEX_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    calling_ae_title TEXT NOT NULL,
    route TEXT,
    state TEXT NOT NULL,                 -- receiving | complete | unrouted
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    quiet_seconds REAL NOT NULL          -- as received; the tracker reads the policy from the settings
);
CREATE TABLE IF NOT EXISTS series_completions (
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    instance_digest TEXT NOT NULL,       -- digest of the series' SOP Instance UIDs at its last completion
    instances INTEGER NOT NULL,
    covered_until REAL NOT NULL,         -- received_at of the newest instance covered; newer ones are pending
    completed_at REAL NOT NULL,
    reason TEXT NOT NULL,                -- quiet | release | expected_series | forced | manual
    PRIMARY KEY (study_instance_uid, series_instance_uid)
);
CREATE TABLE IF NOT EXISTS processing_requests (
    study_instance_uid TEXT PRIMARY KEY, -- "process now": the tracker completes it at its next sweep
    requested_at REAL NOT NULL
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
    attributes TEXT NOT NULL,            -- JSON of routing keywords (no patient identifiers)
    content_hash TEXT,                   -- SHA-256 of the current version's data set as encoded
    transfer_syntax_uid TEXT,            -- of the current version, as received
    versions INTEGER NOT NULL DEFAULT 1  -- contents received under this SOP Instance UID (older: .v<N>.dcm)
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_instance_uid, series_instance_uid);
CREATE TABLE IF NOT EXISTS associations (
    association_id TEXT PRIMARY KEY,
    calling_ae_title TEXT,
    called_ae_title TEXT,
    address TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    instances INTEGER NOT NULL DEFAULT 0, -- instances stored (new ones and new versions)
    outcome TEXT NOT NULL,               -- open | released | aborted | rejected | interrupted (node stopped)
    duplicates INTEGER NOT NULL DEFAULT 0, -- identical resends acknowledged without storing
    failed INTEGER NOT NULL DEFAULT 0,   -- C-STOREs answered with a failure status
    detail TEXT,                         -- why it was rejected or aborted
    listener_pid INTEGER                 -- the process that accepted it (node.listener_processes)
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
    created_at REAL NOT NULL,            -- when its plan was recorded (planning ended)
    updated_at REAL NOT NULL,
    error TEXT,
    planning_started_at REAL,            -- when the planner was asked (the study had completed)
    encoding_started_at REAL,            -- the encoding step (finalize): results to stored SEG/SR/SC ...
    encoding_finished_at REAL            -- ... queued in the outbox; both NULL until it ends
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
CREATE TABLE IF NOT EXISTS commitments (
    transaction_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,                 -- requested | committed | failed
    requested_at REAL NOT NULL,
    answered_at REAL,
    failure_reason INTEGER,
    PRIMARY KEY (transaction_uid, sop_instance_uid)
);
"""


#: Columns added to the tables after their first release: added to an older index when it opens.
_ADDED_COLUMNS = {
    "instances": {
        "content_hash": "TEXT",
        "transfer_syntax_uid": "TEXT",
        "versions": "INTEGER NOT NULL DEFAULT 1",
    },
    "associations": {
        "duplicates": "INTEGER NOT NULL DEFAULT 0",
        "failed": "INTEGER NOT NULL DEFAULT 0",
        "detail": "TEXT",
        "listener_pid": "INTEGER",
    },
    "jobs": {
        "planning_started_at": "REAL",
        "encoding_started_at": "REAL",
        "encoding_finished_at": "REAL",
    },
}


class _Statements(Protocol):
    """What ``Index.connect`` yields: ``sqlite3.Connection`` or ``dicom_node.postgres.Statements``."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


def index_location(settings: Settings) -> str | Path:
    """Where ``settings`` keep the index: the ``index.url`` of PostgreSQL, else ``<node.storage>/index.sqlite3``."""
    if settings.index.url:
        return settings.index.url
    return Path(settings.node.storage) / "index.sqlite3"


def open_index(settings: Settings) -> Index:
    """The index that ``settings`` name (see ``index_location``); creates its tables if they are missing."""
    return Index(index_location(settings))


class Index:
    """Access to the index at ``location``; safe to share between threads and processes.

    ``location`` is the path of a SQLite file (created with its folder if missing) or a
    ``postgresql://`` URL of an existing database, in which the tables are created if missing. Several
    processes and machines may open the same PostgreSQL index at once.
    """

    def __init__(self, location: str | Path) -> None:
        self._postgres: Connections | None = None
        self.path: Path | None = None
        if is_postgresql_url(location):
            self._postgres = Connections(str(location))
            self._create_postgres_tables()
            return
        self.path = Path(location)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(SCHEMA)
        self._add_missing_columns(_ADDED_COLUMNS)

    def __repr__(self) -> str:
        if self._postgres is not None:
            return f"Index(url={redact_url(self._postgres.url)!r})"
        return f"Index(path={str(self.path)!r})"

    @property
    def location(self) -> str:
        """The SQLite path or the PostgreSQL URL (password hidden), for messages."""
        if self._postgres is not None:
            return redact_url(self._postgres.url)
        return str(self.path)

    def close(self) -> None:
        """Close the index's connections; calls after this still work.

        PostgreSQL: the idle connections close, and each later call opens a connection and closes it after.
        SQLite: the calling thread's connection closes; that thread's next call opens a new one.
        """
        if self._postgres is not None:
            self._postgres.close()
            return
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()

    def _create_postgres_tables(self) -> None:
        """Create the tables and add the columns a PostgreSQL index lacks, one process at a time."""
        assert self._postgres is not None
        with self._postgres.transaction() as connection:
            connection.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            connection.connection.execute(postgres_schema(SCHEMA))
            for table, wanted in _ADDED_COLUMNS.items():
                for column, declaration in wanted.items():
                    connection.connection.execute(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {postgres_schema(declaration)}"
                    )

    def _add_missing_columns(self, columns: dict[str, dict[str, str]]) -> None:
        """Add ``{table: {column: declaration}}`` columns that an index made by an older release lacks."""
        connection = self._connection()
        for table, wanted in columns.items():
            present = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})")}
            for column, declaration in wanted.items():
                if column not in present:
                    try:
                        connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                    except sqlite3.OperationalError as exc:  # another process added it first
                        if "duplicate column" not in str(exc):
                            raise

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
    def connect(self) -> Iterator[_Statements]:
        """A connection inside one transaction, committed on success, rolled back on an exception.

        SQLite: ``BEGIN IMMEDIATE`` (one writer at a time). PostgreSQL: READ COMMITTED with row locks;
        every write here is one atomic statement (an UPSERT, or an UPDATE whose WHERE re-checks the row).
        """
        if self._postgres is not None:
            with self._postgres.transaction() as statements:
                yield statements
            return
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[IndexRow]:
        """Run one statement (``?`` placeholders) in its own transaction; its rows, ``[]`` if it has none."""
        if self._postgres is not None:
            with self._postgres.lend() as statements:
                return list(statements.fetch(sql, parameters))
        return self._connection().execute(sql, parameters).fetchall()

    # -- ingest ---------------------------------------------------------------------------------------

    def instance(self, sop_instance_uid: str) -> IndexRow | None:
        rows = self.query("SELECT * FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
        return rows[0] if rows else None

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
        content_hash: str | None = None,
        transfer_syntax_uid: str | None = None,
    ) -> None:
        """Index a spooled instance and (re)open its study for the completion timer.

        An instance indexed already is a new version of it: its row takes the new content's values and
        ``versions`` counts one more. An identical resend is not recorded here (see ``count_duplicate``).
        """
        now = time.time()
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,"
                " modality, path, size, received_at, association_id, attributes, content_hash,"
                " transfer_syntax_uid, versions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,1)"
                " ON CONFLICT(sop_instance_uid) DO UPDATE SET"
                " sop_class_uid=excluded.sop_class_uid, study_instance_uid=excluded.study_instance_uid,"
                " series_instance_uid=excluded.series_instance_uid, modality=excluded.modality,"
                " path=excluded.path, size=excluded.size, received_at=excluded.received_at,"
                " association_id=excluded.association_id, attributes=excluded.attributes,"
                " content_hash=excluded.content_hash, transfer_syntax_uid=excluded.transfer_syntax_uid,"
                " versions=instances.versions + 1",
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
                    content_hash,
                    transfer_syntax_uid,
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
        self,
        association_id: str,
        calling_ae_title: str,
        called_ae_title: str,
        address: str,
        listener_pid: int | None = None,
    ) -> None:
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO associations (association_id, calling_ae_title, called_ae_title, address,"
                " started_at, ended_at, instances, outcome, listener_pid) VALUES (?,?,?,?,?,NULL,0,'open',?)"
                " ON CONFLICT (association_id) DO UPDATE SET calling_ae_title=excluded.calling_ae_title,"
                " called_ae_title=excluded.called_ae_title, address=excluded.address,"
                " started_at=excluded.started_at, ended_at=NULL, instances=0, outcome='open',"
                " duplicates=0, failed=0, detail=NULL, listener_pid=excluded.listener_pid",
                (association_id, calling_ae_title, called_ae_title, address, time.time(), listener_pid),
            )

    def close_association(
        self,
        association_id: str,
        outcome: str,
        *,
        duplicates: int = 0,
        failed: int = 0,
        detail: str | None = None,
    ) -> None:
        """Record how an association ended (released, aborted, rejected) with its duplicate and failure counts."""
        with self.connect() as connection:
            connection.execute(
                "UPDATE associations SET ended_at=?, outcome=?, duplicates=duplicates + ?, failed=failed + ?,"
                " detail=COALESCE(?, detail) WHERE association_id=?",
                (time.time(), outcome, duplicates, failed, detail, association_id),
            )

    def interrupt_open_associations(self, called_ae_title: str, listener_pid: int | None = None) -> int:
        """Close the associations to ``called_ae_title`` left open by a node that stopped (or only those of
        the listener process ``listener_pid``, which died); return how many."""
        who = "the node" if listener_pid is None else f"listener process {listener_pid}"
        sql = (
            "UPDATE associations SET outcome='interrupted', ended_at=COALESCE(ended_at, ?),"
            " detail=COALESCE(detail, ?) WHERE outcome='open' AND called_ae_title=?"
        )
        parameters = [time.time(), f"{who} stopped while the association was open", called_ae_title]
        if listener_pid is not None:
            sql += " AND listener_pid=?"
            parameters.append(listener_pid)
        with self.connect() as connection:
            return connection.execute(sql, tuple(parameters)).rowcount

    # -- study completion -----------------------------------------------------------------------------

    def study(self, study_instance_uid: str) -> IndexRow | None:
        rows = self.query("SELECT * FROM studies WHERE study_instance_uid=?", (study_instance_uid,))
        return rows[0] if rows else None

    def studies_to_check(self, study_instance_uid: str | None = None) -> list[IndexRow]:
        """Studies still receiving or asked to be processed now (``requested_at`` not NULL), oldest first."""
        sql = (
            "SELECT s.*, r.requested_at FROM studies s LEFT JOIN processing_requests r USING (study_instance_uid)"
            " WHERE (s.state='receiving' OR r.requested_at IS NOT NULL)"
        )
        if study_instance_uid is None:
            return self.query(sql + " ORDER BY s.first_received_at")
        return self.query(sql + " AND s.study_instance_uid=?", (study_instance_uid,))

    def series_progress(self, study_instance_uid: str) -> list[IndexRow]:
        """What completion needs to know of each series of a study, one row per series.

        ``instances``, ``first_received_at``, ``last_received_at``; ``first_pending_at``: the first instance
        received after the series' last completion (NULL when nothing is pending); ``released_at``: the
        latest release of an association that delivered its instances; ``open_associations``: how many
        of those are still open; ``instance_digest``: the digest recorded at its last completion.
        """
        return self.query(
            "SELECT i.series_instance_uid, COUNT(*) AS instances,"
            " MIN(i.received_at) AS first_received_at, MAX(i.received_at) AS last_received_at,"
            " MIN(CASE WHEN c.covered_until IS NULL OR i.received_at > c.covered_until"
            "     THEN i.received_at END) AS first_pending_at,"
            " MAX(CASE WHEN a.outcome='released' THEN a.ended_at END) AS released_at,"
            " COUNT(DISTINCT CASE WHEN a.outcome='open' THEN a.association_id END) AS open_associations,"
            " MAX(c.instance_digest) AS instance_digest"
            " FROM instances i"
            " LEFT JOIN series_completions c"
            "   ON c.study_instance_uid=i.study_instance_uid AND c.series_instance_uid=i.series_instance_uid"
            " LEFT JOIN associations a ON a.association_id=i.association_id"
            " WHERE i.study_instance_uid=? GROUP BY i.series_instance_uid ORDER BY i.series_instance_uid",
            (study_instance_uid,),
        )

    def record_completion(
        self, study_instance_uid: str, series: list[tuple[str, str, int, float]], reason: str
    ) -> None:
        """Record that each ``(series uid, instance digest, instances, covered_until)`` completed for ``reason``."""
        now = time.time()
        with self.connect() as connection:
            connection.executemany(
                "INSERT INTO series_completions VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (study_instance_uid, series_instance_uid) DO UPDATE SET"
                " instance_digest=excluded.instance_digest, instances=excluded.instances,"
                " covered_until=excluded.covered_until, completed_at=excluded.completed_at,"
                " reason=excluded.reason",
                [
                    (study_instance_uid, series_uid, digest, instances, covered_until, now, reason)
                    for series_uid, digest, instances, covered_until in series
                ],
            )

    def series_completions(self, study_instance_uid: str) -> list[IndexRow]:
        return self.query(
            "SELECT * FROM series_completions WHERE study_instance_uid=? ORDER BY series_instance_uid",
            (study_instance_uid,),
        )

    def request_processing(self, study_instance_uid: str) -> bool:
        """Ask the tracker to complete a study now ("process now"); False when the study is not indexed."""
        with self.connect() as connection:
            known = connection.execute(
                "SELECT 1 FROM studies WHERE study_instance_uid=?", (study_instance_uid,)
            ).fetchone()
            if known is None:
                return False
            connection.execute(
                "INSERT INTO processing_requests VALUES (?,?)"
                " ON CONFLICT (study_instance_uid) DO UPDATE SET requested_at=excluded.requested_at",
                (study_instance_uid, time.time()),
            )
            return True

    def clear_processing_request(self, study_instance_uid: str, requested_at: float) -> None:
        """Remove a handled request, unless it was made again since it was read."""
        with self.connect() as connection:
            connection.execute(
                "DELETE FROM processing_requests WHERE study_instance_uid=? AND requested_at=?",
                (study_instance_uid, requested_at),
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

    def instances_of_study(self, study_instance_uid: str) -> list[IndexRow]:
        return self.query(
            "SELECT * FROM instances WHERE study_instance_uid=? ORDER BY series_instance_uid, sop_instance_uid",
            (study_instance_uid,),
        )

    def instances_of_series(self, series_instance_uid: str) -> list[IndexRow]:
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
        planning_started_at: float | None = None,
    ) -> bool:
        """Insert a job and its actions; return False if the job already exists (idempotent).

        ``planning_started_at``: when the planner was asked for ``plan`` (UNIX seconds); the job's
        ``created_at`` (now) is when planning ended.
        """
        now = time.time()
        with self.connect() as connection:
            cursor = connection.execute(
                "INSERT INTO jobs (job_id, study_instance_uid, series_instance_uid, route, instruction,"
                " destinations, plan, state, created_at, updated_at, planning_started_at)"
                " VALUES (?,?,?,?,?,?,?,'queued',?,?,?) ON CONFLICT (job_id) DO NOTHING",
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
                    planning_started_at,
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

    def job(self, job_id: str) -> IndexRow | None:
        rows = self.query("SELECT * FROM jobs WHERE job_id=?", (job_id,))
        return rows[0] if rows else None

    def jobs_of_study(self, study_instance_uid: str) -> list[IndexRow]:
        return self.query(
            "SELECT * FROM jobs WHERE study_instance_uid=? ORDER BY created_at", (study_instance_uid,)
        )

    def jobs(self, state: str | None = None) -> list[IndexRow]:
        if state is None:
            return self.query("SELECT * FROM jobs ORDER BY created_at")
        return self.query("SELECT * FROM jobs WHERE state=? ORDER BY created_at", (state,))

    def set_job_state(self, job_id: str, state: str, error: str | None = None) -> None:
        with self.connect() as connection:
            connection.execute(
                "UPDATE jobs SET state=?, error=?, updated_at=? WHERE job_id=?",
                (state, error, time.time(), job_id),
            )

    def finish_encoding(self, job_id: str, state: str, error: str | None, started_at: float) -> None:
        """Record the end of a job's encoding step: its final state and error, when the step started
        (``started_at``) and ended (now)."""
        now = time.time()
        with self.connect() as connection:
            connection.execute(
                "UPDATE jobs SET state=?, error=?, updated_at=?, encoding_started_at=?, encoding_finished_at=?"
                " WHERE job_id=?",
                (state, error, now, started_at, now, job_id),
            )

    def actions(self, job_id: str) -> list[IndexRow]:
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
                "INSERT INTO outputs VALUES (?,?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO UPDATE SET"
                " job_id=excluded.job_id, kind=excluded.kind, sop_class_uid=excluded.sop_class_uid,"
                " path=excluded.path, created_at=excluded.created_at",
                (sop_instance_uid, job_id, kind, sop_class_uid, path, now),
            )
            for destination in destinations:
                connection.execute(
                    "INSERT INTO deliveries (sop_instance_uid, destination, state, next_attempt_at)"
                    " VALUES (?,?,'pending',?) ON CONFLICT (sop_instance_uid, destination) DO NOTHING",
                    (sop_instance_uid, destination, now),
                )

    def outputs(self, job_id: str | None = None) -> list[IndexRow]:
        if job_id is None:
            return self.query("SELECT * FROM outputs ORDER BY created_at")
        return self.query("SELECT * FROM outputs WHERE job_id=? ORDER BY kind", (job_id,))

    def due_deliveries(self, now: float, limit: int = 100) -> list[IndexRow]:
        return self.query(
            "SELECT d.*, o.path, o.sop_class_uid, o.kind FROM deliveries d JOIN outputs o USING (sop_instance_uid)"
            " WHERE d.state='pending' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
            (now, limit),
        )

    def deliveries(self, sop_instance_uid: str | None = None) -> list[IndexRow]:
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

    def resubmit_deliveries(
        self,
        *,
        sop_instance_uid: str | None = None,
        destination: str | None = None,
        states: tuple[str, ...] = ("dead",),
    ) -> int:
        """Queue deliveries again (dead letters by default) for an immediate try; return how many."""
        conditions = [f"state IN ({','.join('?' * len(states))})"]
        parameters: list[object] = list(states)
        if sop_instance_uid is not None:
            conditions.append("sop_instance_uid=?")
            parameters.append(sop_instance_uid)
        if destination is not None:
            conditions.append("destination=?")
            parameters.append(destination)
        with self.connect() as connection:
            cursor = connection.execute(
                "UPDATE deliveries SET state='pending', attempts=0, first_attempt_at=NULL, next_attempt_at=?"
                " WHERE " + " AND ".join(conditions),
                (time.time(), *parameters),
            )
            return cursor.rowcount

    # -- storage commitment ---------------------------------------------------------------------------

    def record_commitment_request(
        self, transaction_uid: str, destination: str, sop_instance_uids: list[str]
    ) -> None:
        now = time.time()
        with self.connect() as connection:
            connection.executemany(
                "INSERT INTO commitments VALUES (?,?,?,'requested',?,NULL,NULL)"
                " ON CONFLICT (transaction_uid, sop_instance_uid) DO UPDATE SET destination=excluded.destination,"
                " state='requested', requested_at=excluded.requested_at, answered_at=NULL, failure_reason=NULL",
                [(transaction_uid, uid, destination, now) for uid in sop_instance_uids],
            )

    def forget_commitment_request(self, transaction_uid: str) -> None:
        with self.connect() as connection:
            connection.execute("DELETE FROM commitments WHERE transaction_uid=?", (transaction_uid,))

    def record_commitment_result(
        self, transaction_uid: str, committed: list[str], failed: dict[str, int], answered_at: float
    ) -> bool:
        """Record a destination's answer; return False when the transaction is unknown."""
        with self.connect() as connection:
            known = connection.execute(
                "SELECT COUNT(*) FROM commitments WHERE transaction_uid=?", (transaction_uid,)
            ).fetchone()[0]
            for uid in committed:
                connection.execute(
                    "UPDATE commitments SET state='committed', answered_at=? WHERE transaction_uid=? AND sop_instance_uid=?",
                    (answered_at, transaction_uid, uid),
                )
            for uid, reason in failed.items():
                connection.execute(
                    "UPDATE commitments SET state='failed', answered_at=?, failure_reason=?"
                    " WHERE transaction_uid=? AND sop_instance_uid=?",
                    (answered_at, reason, transaction_uid, uid),
                )
            return bool(known)

    def commitments(self, sop_instance_uid: str | None = None) -> list[IndexRow]:
        if sop_instance_uid is None:
            return self.query("SELECT * FROM commitments ORDER BY requested_at")
        return self.query("SELECT * FROM commitments WHERE sop_instance_uid=?", (sop_instance_uid,))

    # -- admin API queries (read only) ----------------------------------------------------------------

    def study_list(self, *, state: str | None = None, limit: int = 100, offset: int = 0) -> list[IndexRow]:
        """Studies, the most recently received first, with their instance, series and job counts."""
        sql = (
            "SELECT s.*,"
            " (SELECT COUNT(*) FROM instances i WHERE i.study_instance_uid=s.study_instance_uid) AS instances,"
            " (SELECT COUNT(DISTINCT i.series_instance_uid) FROM instances i"
            "  WHERE i.study_instance_uid=s.study_instance_uid) AS series,"
            " (SELECT COUNT(*) FROM jobs j WHERE j.study_instance_uid=s.study_instance_uid) AS jobs"
            " FROM studies s"
        )
        parameters: list[object] = []
        if state is not None:
            sql += " WHERE s.state=?"
            parameters.append(state)
        sql += " ORDER BY s.last_received_at DESC, s.study_instance_uid LIMIT ? OFFSET ?"
        return self.query(sql, (*parameters, limit, offset))

    def series_of_study(self, study_instance_uid: str) -> list[IndexRow]:
        """One row per series of a study: instance count, bytes, first and last receipt, one instance's
        indexed attributes (JSON; the series-level keywords are the same in every instance)."""
        return self.query(
            "SELECT series_instance_uid, COUNT(*) AS instances, SUM(size) AS size, MIN(modality) AS modality,"
            " MIN(received_at) AS first_received_at, MAX(received_at) AS last_received_at,"
            " MIN(attributes) AS attributes"
            " FROM instances WHERE study_instance_uid=? GROUP BY series_instance_uid"
            " ORDER BY series_instance_uid",
            (study_instance_uid,),
        )

    def job_list(
        self,
        *,
        state: str | None = None,
        study_instance_uid: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[IndexRow]:
        """Jobs, the newest first, optionally of one state and one study."""
        conditions: list[str] = []
        parameters: list[object] = []
        if state is not None:
            conditions.append("state=?")
            parameters.append(state)
        if study_instance_uid is not None:
            conditions.append("study_instance_uid=?")
            parameters.append(study_instance_uid)
        where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        return self.query(
            "SELECT * FROM jobs" + where + " ORDER BY created_at DESC, job_id LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        )

    def deliveries_of_job(self, job_id: str) -> list[IndexRow]:
        """The outbox rows of every object a job produced, with the object's kind."""
        return self.query(
            "SELECT d.*, o.kind FROM deliveries d JOIN outputs o ON o.sop_instance_uid=d.sop_instance_uid"
            " WHERE o.job_id=? ORDER BY o.kind, d.sop_instance_uid, d.destination",
            (job_id,),
        )

    def association_log(
        self,
        *,
        outcome: str | None = None,
        calling_ae_title: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[IndexRow]:
        """The association audit log, the most recent first, optionally of one outcome and calling AE."""
        conditions: list[str] = []
        parameters: list[object] = []
        if outcome is not None:
            conditions.append("outcome=?")
            parameters.append(outcome)
        if calling_ae_title is not None:
            conditions.append("calling_ae_title=?")
            parameters.append(calling_ae_title)
        where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        return self.query(
            "SELECT * FROM associations"
            + where
            + " ORDER BY started_at DESC, association_id LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        )

    def state_counts(self) -> dict[str, dict[str, int]]:
        """Row counts by state: ``{"studies": {...}, "jobs": ..., "actions": ..., "deliveries": ...,
        "associations": {outcome: n}}`` (for the metrics)."""
        grouped = {
            "studies": "SELECT state AS value, COUNT(*) AS n FROM studies GROUP BY state",
            "jobs": "SELECT state AS value, COUNT(*) AS n FROM jobs GROUP BY state",
            "actions": "SELECT state AS value, COUNT(*) AS n FROM actions GROUP BY state",
            "deliveries": "SELECT state AS value, COUNT(*) AS n FROM deliveries GROUP BY state",
            "associations": "SELECT outcome AS value, COUNT(*) AS n FROM associations GROUP BY outcome",
        }
        return {
            name: {str(row["value"]): int(row["n"]) for row in self.query(sql)}
            for name, sql in grouped.items()
        }

    def instance_totals(self) -> tuple[int, int]:
        """``(instances, bytes)`` held in the spool."""
        row = self.query("SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS size FROM instances")[0]
        return int(row["n"]), int(row["size"])

    def action_durations(self) -> list[IndexRow]:
        """Per tool and final state: how many actions finished and their summed run time in seconds."""
        return self.query(
            "SELECT api_name, state, COUNT(*) AS n, SUM(finished_at - started_at) AS seconds FROM actions"
            " WHERE started_at IS NOT NULL AND finished_at IS NOT NULL GROUP BY api_name, state"
            " ORDER BY api_name, state"
        )
