"""The PostgreSQL journal's schema (``state.backend = "postgres"``), versioned.

The same tables as the SQLite journal (`schema.py`), plus ``journal_state`` (one row: the
last delivery position handed out and the dedupe index's size, the counters every node's
group commit moves under that row's lock) and ``leases`` (which node delivers each sink and
runs the media stage). Migrations run under an advisory lock, each once, recorded in
``schema_version``: a node that starts while others run waits for the one that migrates,
then finds nothing left to do; every statement is ``IF NOT EXISTS`` besides.

Tables live in the connection's first ``search_path`` schema, so several deployments (or
tests) can share one database, each in a schema of its own.
"""

from __future__ import annotations

from typing import Any

import psycopg

from wahookd.errors import JournalError

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS journal_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_dseq BIGINT NOT NULL,
    dedupe_entries BIGINT NOT NULL
);
INSERT INTO journal_state (id, last_dseq, dedupe_entries) VALUES (1, 0, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    dseq BIGINT UNIQUE,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_waiting ON events(seq) WHERE dseq IS NULL;
CREATE INDEX IF NOT EXISTS events_id ON events(id);
CREATE SEQUENCE IF NOT EXISTS dedupe_used;
CREATE TABLE IF NOT EXISTS dedupe (key BYTEA PRIMARY KEY, used BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS dedupe_by_use ON dedupe(used);
CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, dseq BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id BIGSERIAL PRIMARY KEY,
    sink TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    failed_at DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_sink ON dead_letters(sink, id);
CREATE TABLE IF NOT EXISTS deliveries (
    sink TEXT NOT NULL, dseq BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (sink, dseq)
);
CREATE TABLE IF NOT EXISTS retries (
    sink TEXT NOT NULL,
    event_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_try DOUBLE PRECISION NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (sink, event_id)
);
CREATE TABLE IF NOT EXISTS pauses (sink TEXT PRIMARY KEY, paused_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS erased (dseq BIGINT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL
);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)
# Every node that starts, and every CLI command, may migrate: one at a time per schema.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.wahookd.migrations'))"
LOCK_TIMEOUT = "5s"  # a row another node's batch holds longer than this: 503, the provider retries


def connect(url: str, *, durable: bool = True, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection with the settings every user of the journal needs."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=5)
        conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        if not durable:  # durability = "os": the commit returns before the WAL is flushed
            conn.execute("SET synchronous_commit = off")
    except psycopg.Error as exc:
        raise JournalError(f"cannot connect to the journal database: {exc}") from None
    return conn


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to `SCHEMA_VERSION` (safe while other nodes run); returns it."""
    try:
        with conn.transaction():
            conn.execute(MIGRATION_LOCK)
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise JournalError(
                    f"the journal database has schema version {current}; this wahookd knows "
                    f"{SCHEMA_VERSION}: upgrade this node"
                )
            for version in sorted(MIGRATIONS):
                if version > current:
                    conn.execute(MIGRATIONS[version])  # type: ignore[arg-type] # fixed text
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    except psycopg.Error as exc:
        raise JournalError(f"cannot migrate the journal database: {exc}") from None
    return SCHEMA_VERSION


def describe(url: str) -> str:
    """The database a DSN names, without its password (for `status`)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql"
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    return f"postgresql://{host}:{port}/{info.get('dbname', '')}"
