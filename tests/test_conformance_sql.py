"""The built-in `sql` sink against the conformance suite (SPEC §6): a real SQLite file and the
local PostgreSQL (reached through a `TcpProxy`, so the suite can cut it).

read_back() reads the ``fields`` and ``raw`` columns, the exact JSON of the event (the plain
columns are for queries; a NUL in them is U+FFFD on PostgreSQL, see `wahookd.sinks.sql`).
"""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wahookd.events import load_json
from wahookd.testing import SinkConformance, TcpProxy

POSTGRES = ("127.0.0.1", 5432)
POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def rows_as_events(rows: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
    events = []
    for fields, raw in rows:
        event = load_json(fields)
        event["raw"] = load_json(raw) if raw is not None else None
        events.append(event)
    return events


class SqlConformance(SinkConformance):
    plugin = "sql"
    concurrency = 8


class TestSqliteConformance(SqlConformance):
    def options(self, tmp_path: Path) -> dict[str, Any]:
        self.database = tmp_path / "events.db"
        self.lock: sqlite3.Connection | None = None
        return {"url": f"sqlite:///{self.database}"}

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.database, isolation_level=None, timeout=10)

    def read_back(self) -> list[dict[str, Any]]:
        with contextlib_closing(self.connect()) as conn:
            return rows_as_events(conn.execute("SELECT fields, raw FROM events").fetchall())

    # Another writer holds the database: the sink's writes wait out busy_timeout, then fail.
    def break_target(self) -> None:
        self.lock = self.connect()
        self.lock.execute("BEGIN EXCLUSIVE")

    def heal_target(self) -> None:
        if self.lock is not None:
            self.lock.rollback()
            self.lock.close()
            self.lock = None
        with contextlib_closing(self.connect()) as conn:
            conn.execute("DROP TRIGGER IF EXISTS conformance_refuse")

    def refuse_target(self) -> None:
        with contextlib_closing(self.connect()) as conn:
            conn.execute(
                "CREATE TRIGGER conformance_refuse BEFORE INSERT ON events "
                "BEGIN SELECT RAISE(ABORT, 'refused by the conformance suite'); END"
            )


def postgres_up() -> bool:
    try:
        socket.create_connection(POSTGRES, timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not postgres_up(), reason="no PostgreSQL on 127.0.0.1:5432")
class TestPostgresConformance(SqlConformance):
    @pytest.fixture(autouse=True)
    def _drop_tables(self) -> Iterator[None]:
        yield
        if hasattr(self, "prefix"):
            with self.connect() as conn:
                for table in ("events", "message_status", "wahookd_schema"):
                    conn.execute(f'DROP TABLE IF EXISTS "{self.prefix}{table}"')

    def options(self, tmp_path: Path) -> dict[str, Any]:
        self.prefix = f"c{uuid.uuid4().hex[:10]}_"
        self.proxy = TcpProxy(*POSTGRES)
        url = f"postgresql://postgres@127.0.0.1:{self.proxy.port}/test"
        return {"url": url, "table_prefix": self.prefix, "pool_size": 8}

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(POSTGRES_DSN, autocommit=True)

    def read_back(self) -> list[dict[str, Any]]:
        with self.connect() as conn:
            rows = conn.execute(f'SELECT fields, raw FROM "{self.prefix}events"').fetchall()
        return rows_as_events(rows)

    def break_target(self) -> None:
        self.proxy.cut()

    def heal_target(self) -> None:
        self.proxy.restore()
        with self.connect() as conn:
            conn.execute(f'ALTER TABLE "{self.prefix}events" DROP CONSTRAINT IF EXISTS conformance_refuse')

    def refuse_target(self) -> None:
        with self.connect() as conn:
            conn.execute(
                f'ALTER TABLE "{self.prefix}events" ADD CONSTRAINT conformance_refuse CHECK (false) NOT VALID'
            )


def contextlib_closing(conn: sqlite3.Connection) -> Any:
    import contextlib

    return contextlib.closing(conn)
