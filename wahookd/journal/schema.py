"""The SQLite journal's schema, its connection pragmas, and the statement helpers every
module of the package shares: the one owner of the table definitions.

Tables (other processes, e.g. ``wahookd status``, may read them while the daemon runs):

- ``events``: one row per accepted event. ``dseq`` (delivery order) is NULL while the event
  waits for its media and is assigned when it becomes ready for the sinks.
- ``dedupe``: 16-byte BLAKE2b keys of (source, event id) with an LRU counter (`dedupe.py`).
- ``cursors``: each sink's last delivered ``dseq``. ``dead_letters``: events a sink gave up on.
- ``deliveries``, ``retries``, ``pauses``, ``erased``: what `trace`, `status`, `pause` and
  `fsck` need (see each table's comment).
"""

from __future__ import annotations

import functools
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wahookd.events import dump_json, format_time

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_at REAL NOT NULL,
    dseq INTEGER UNIQUE,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_waiting ON events(seq) WHERE dseq IS NULL;
CREATE TABLE IF NOT EXISTS dedupe (key BLOB PRIMARY KEY, used INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_used ON dedupe(used);
CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, dseq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_sink ON dead_letters(sink, id);
-- When each sink's position passed each point: `trace` tells when an event was delivered.
CREATE TABLE IF NOT EXISTS deliveries (
    sink TEXT NOT NULL, dseq INTEGER NOT NULL, at REAL NOT NULL, PRIMARY KEY (sink, dseq)
) WITHOUT ROWID;
-- The event a sink is retrying (at most `concurrency` per sink): `trace` and `status`.
CREATE TABLE IF NOT EXISTS retries (
    sink TEXT NOT NULL,
    event_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_try REAL NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (sink, event_id)
) WITHOUT ROWID;
-- Sinks an operator paused (`wahookd pause`): the daemon follows this table.
CREATE TABLE IF NOT EXISTS pauses (sink TEXT PRIMARY KEY, paused_at REAL NOT NULL);
"""
# `wahookd forget` may run against a journal an older wahookd made: it adds this itself.
ERASED_SCHEMA = """
-- Delivery positions whose events `wahookd forget` erased before every sink had passed
-- them: `wahookd fsck` tells these holes from events lost to a torn disk.
CREATE TABLE IF NOT EXISTS erased (dseq INTEGER PRIMARY KEY);
"""
BUSY_TIMEOUT_MS = 5000
JOURNAL_FILE = "journal.db"
FORGET_EVENT = "privacy.forget"  # the system event `wahookd forget` journals
PAGE_BYTES = 8192


def connect(path: Path, *, durable: bool = True, cache_kib: int = 2048) -> sqlite3.Connection:
    """A connection with the pragmas every user of the journal needs."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    # Only a new file takes this (a no-op afterwards): an event with its `raw` payload is
    # 2-3 KB, and 8 KiB pages measured ~20% less CPU per committed event than 4 KiB.
    conn.execute(f"PRAGMA page_size={PAGE_BYTES}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


DSEQ_HIGH = "dseq_high"  # meta key: the highest position whose event was deleted


def high_water(conn: sqlite3.Connection) -> int:
    """The journal's end: the last delivery position handed out, also when pruning or
    `forget` deleted the events that had it."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT max(dseq) FROM events), 0), "
        "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0))",
        (DSEQ_HIGH,),
    ).fetchone()
    return int(row[0])


def max_cursor(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(dseq), 0) FROM cursors").fetchone()[0])


def raise_high_water(conn: sqlite3.Connection, dseq: int) -> None:
    """Remember that positions up to `dseq` were handed out (before deleting their events)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
        "value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
        (DSEQ_HIGH, str(dseq)),
    )


def encode(event: dict[str, Any]) -> str:
    return dump_json(event).decode()


def format_time_from(epoch: float) -> str:
    return format_time(datetime.fromtimestamp(epoch, tz=UTC))


MAX_ROWS_PER_STATEMENT = 256


@functools.lru_cache(maxsize=64)
def placeholders(count: int) -> str:
    """`(?, ?, ...)` with `count` marks."""
    return "(" + ", ".join("?" * count) + ")"


@functools.lru_cache(maxsize=64)
def rows_sql(statement: str, width: int, rows: int, suffix: str = "") -> str:
    """`statement` followed by `rows` groups of `width` placeholders (and `suffix`)."""
    return f"{statement} {', '.join([placeholders(width)] * rows)} {suffix}".rstrip()


def chunks(count: int, most: int) -> list[tuple[int, int]]:
    """(start, size) pieces of `count` rows, each a power of two up to `most`, so that a
    handful of statement texts (all in sqlite3's statement cache) cover any count."""
    pieces = []
    start = 0
    while start < count:
        size = min(most, 1 << ((count - start).bit_length() - 1))
        pieces.append((start, size))
        start += size
    return pieces


def rows_per_statement(conn: sqlite3.Connection, width: int) -> int:
    """The most rows of `width` values one statement may bind: a power of two, within
    SQLite's parameter limit (999 before SQLite 3.32, 32766 since)."""
    fits = min(MAX_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    return 1 << (fits.bit_length() - 1)


def insert_rows(
    conn: sqlite3.Connection, statement: str, width: int, rows: list[tuple[Any, ...]], suffix: str = ""
) -> list[int]:
    """Insert `rows` in a few statements (each ending in `suffix`, e.g. an upsert clause);
    returns their rowids (for a rowid table: the dedupe table has none, and its caller
    ignores them)."""
    rowids: list[int] = []
    for start, size in chunks(len(rows), rows_per_statement(conn, width)):
        values = [value for row in rows[start : start + size] for value in row]
        last = conn.execute(rows_sql(statement, width, size, suffix), values).lastrowid or 0
        # One statement takes consecutive rowids: nothing else writes meanwhile.
        rowids.extend(range(last - size + 1, last + 1))
    return rowids
