"""PostgreSQL under the index: connections lent one caller at a time, rows read by name or by position.

``dicom_node.index`` writes its SQL once, with SQLite's ``?`` placeholders, in the dialect that SQLite and
PostgreSQL share (UPSERT with ``ON CONFLICT``). This module translates the placeholders, turns the SQLite
table definitions into PostgreSQL ones that store, compare and sort the same values, and hands out
connections: each call (a query, or one transaction) borrows a connection and gives it back, so the
threads of a node never share one, and a connection that broke (the server restarted) is dropped and
replaced on the next call.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from config.settings import redact_url

__all__ = ["Connections", "Row", "Statements", "is_postgresql_url", "postgres_schema", "redact_url"]

#: ``pg_advisory_xact_lock`` key held while one process creates or upgrades the tables ("MEDAGENT").
SCHEMA_LOCK = 0x4D45444147454E54

_SQLITE_TO_POSTGRES_TYPES = (
    # 64-bit integers like SQLite's; REAL would be PostgreSQL's 4-byte float, which cannot hold a UNIX time
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    # byte order, as SQLite's BINARY collation: UIDs sort and compare the same in both
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)


def is_postgresql_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def postgres_schema(sqlite_schema: str) -> str:
    """The PostgreSQL form of SQLite ``CREATE TABLE`` / ``CREATE INDEX`` statements (comments dropped)."""
    schema = re.sub(r"--[^\n]*", "", sqlite_schema)
    for pattern, replacement in _SQLITE_TO_POSTGRES_TYPES:
        schema = pattern.sub(replacement, schema)
    return schema


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """``sql`` with ``?`` placeholders outside quotes as ``%s`` and every literal ``%`` as ``%%``."""
    out: list[str] = []
    quote = ""
    for character in sql:
        if character == "%":
            out.append("%%")
            continue
        if quote:
            if character == quote:
                quote = ""
        elif character in "'\"":
            quote = character
        elif character == "?":
            out.append("%s")
            continue
        out.append(character)
    return "".join(out)


class Row(Sequence[Any]):
    """A result row read by column name (case-insensitive) or by position, as ``sqlite3.Row`` is read.

    ``keys()`` lists the column names, iteration yields the values, so ``dict(row)`` and ``tuple(row)``
    work as they do on SQLite rows. An unknown name raises ``IndexError``, as ``sqlite3.Row`` does.
    """

    __slots__ = ("_names", "_positions", "_values")

    def __init__(self, names: tuple[str, ...], positions: dict[str, int], values: tuple[Any, ...]) -> None:
        self._names = names
        self._positions = positions
        self._values = values

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._positions[key.lower()]]
            except KeyError:
                raise IndexError(f"No item with that key: {key!r}") from None
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._names == other._names and self._values == other._values

    def __hash__(self) -> int:
        return hash((self._names, self._values))

    def __repr__(self) -> str:
        return (
            "Row({"
            + ", ".join(f"{n!r}: {v!r}" for n, v in zip(self._names, self._values, strict=True))
            + "})"
        )

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], Row]:
    names = tuple(column.name for column in cursor.description or ())
    positions: dict[str, int] = {}
    for position, name in enumerate(names):
        positions.setdefault(name.lower(), position)  # the first of equal names, as sqlite3.Row

    def make(values: Sequence[Any]) -> Row:
        return Row(names, positions, tuple(values))

    return make


class Statements:
    """One borrowed connection with the ``execute`` / ``executemany`` calls of ``sqlite3.Connection``."""

    def __init__(self, connection: psycopg.Connection[Row]) -> None:
        self.connection = connection

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> psycopg.Cursor[Row]:
        return self.connection.execute(_pyformat(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> psycopg.Cursor[Row]:
        cursor = self.connection.cursor()
        cursor.executemany(_pyformat(sql), [tuple(p) for p in parameters])
        return cursor

    def fetch(self, sql: str, parameters: Iterable[Any] = ()) -> list[Row]:
        """The rows of a query; ``[]`` for a statement that returns none (an UPDATE)."""
        cursor = self.execute(sql, parameters)
        return cursor.fetchall() if cursor.description is not None else []


class Connections:
    """Autocommit connections to the database at ``url``, lent to one caller at a time and kept for reuse.

    At most ``keep`` idle connections are kept; one idle for more than ``check_after`` seconds is checked
    with a round trip before it is lent. A connection that broke or was left inside a transaction is
    closed, not kept. A child process (``fork``) never uses its parent's connections: it opens its own
    and leaves the inherited ones untouched, so that closing them does not end the parent's sessions.
    """

    def __init__(self, url: str, keep: int = 8, check_after: float = 30.0) -> None:
        self.url = url
        self.keep = keep
        self.check_after = check_after
        self._options: dict[str, Any] = {}
        given = conninfo_to_dict(url)
        if "connect_timeout" not in given:
            self._options["connect_timeout"] = 10
        if "application_name" not in given:
            self._options["application_name"] = "medagent"
        self._idle: list[tuple[psycopg.Connection[Row], float]] = []
        self._inherited: list[psycopg.Connection[Row]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"Connections(url={redact_url(self.url)!r})"

    def _open(self) -> psycopg.Connection[Row]:
        return psycopg.connect(self.url, autocommit=True, row_factory=_row_factory, **self._options)

    def _take(self) -> psycopg.Connection[Row]:
        while True:
            with self._lock:
                if os.getpid() != self._pid:
                    self._inherited.extend(connection for connection, _ in self._idle)
                    self._idle.clear()
                    self._pid = os.getpid()
                if not self._idle:
                    break
                connection, idle_since = self._idle.pop()
            if connection.closed:
                continue
            if time.monotonic() - idle_since > self.check_after:
                try:
                    connection.execute("SELECT 1")
                except psycopg.Error:
                    connection.close()
                    continue
            return connection
        return self._open()

    def _give_back(self, connection: psycopg.Connection[Row]) -> None:
        if (
            connection.closed
            or connection.broken
            or connection.info.transaction_status != TransactionStatus.IDLE
        ):
            connection.close()
            return
        with self._lock:
            if os.getpid() == self._pid and len(self._idle) < self.keep:
                self._idle.append((connection, time.monotonic()))
                return
        connection.close()

    @contextmanager
    def lend(self) -> Iterator[Statements]:
        """A connection for this caller alone until the ``with`` block ends."""
        connection = self._take()
        try:
            yield Statements(connection)
        finally:
            self._give_back(connection)

    @contextmanager
    def transaction(self) -> Iterator[Statements]:
        """A connection inside one transaction (READ COMMITTED), committed on success, else rolled back."""
        with self.lend() as statements, statements.connection.transaction():
            yield statements

    def close(self) -> None:
        """Close the idle connections and keep none from now on: those lent out close when given back."""
        with self._lock:
            idle, self._idle = self._idle, []
            self.keep = 0
        for connection, _ in idle:
            connection.close()
