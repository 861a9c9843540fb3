"""The dedupe index: 16-byte BLAKE2b keys of (source, event id) with an LRU counter.

Indexed both ways (by key, by use); the oldest entries are evicted past
``dedupe.capacity``. SQLite's B-tree keeps a lookup at a handful of page reads at a million
keys, and the index lives on disk, so memory does not grow with the capacity. These run on
the writer's connection inside its batch transaction, so a new event and its key are one
commit.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable

from wahookd.journal.schema import chunks, insert_rows, placeholders, rows_per_statement


def dedupe_key(source: str, event_id: str) -> bytes:
    return hashlib.blake2b(f"{source}\x00{event_id}".encode(), digest_size=16).digest()


def known_keys(conn: sqlite3.Connection, keys: list[bytes]) -> set[bytes]:
    """Which of `keys` the dedupe index holds."""
    unique = list(dict.fromkeys(keys))
    known: set[bytes] = set()
    for start, size in chunks(len(unique), rows_per_statement(conn, 1)):
        sql = "SELECT key FROM dedupe WHERE key IN " + placeholders(size)  # noqa: S608 - marks only
        known.update(row[0] for row in conn.execute(sql, unique[start : start + size]))
    return known


def add_keys(conn: sqlite3.Connection, rows: list[tuple[bytes, int]]) -> None:
    """New (key, used) rows."""
    insert_rows(conn, "INSERT INTO dedupe (key, used) VALUES", 2, rows)


def touch_keys(conn: sqlite3.Connection, touched: list[tuple[int, bytes]]) -> None:
    """Mark (used, key) as used just now: a duplicate keeps its key young."""
    if touched:
        conn.executemany("UPDATE dedupe SET used = ? WHERE key = ?", touched)


def evict_oldest(conn: sqlite3.Connection, excess: int) -> None:
    conn.execute(
        "DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe ORDER BY used LIMIT ?)",
        (excess,),
    )


def usage(conn: sqlite3.Connection) -> tuple[int, int]:
    """(the highest use counter, the number of entries), for a writer that starts."""
    used = conn.execute("SELECT coalesce(max(used), 0) FROM dedupe").fetchone()[0]
    entries = conn.execute("SELECT count(*) FROM dedupe").fetchone()[0]
    return int(used), int(entries)


def fill(conn: sqlite3.Connection, rows: Iterable[tuple[bytes, int]]) -> None:
    """Insert (key, used) rows outside the daemon (the benchmark's pre-fill)."""
    conn.executemany("INSERT OR IGNORE INTO dedupe (key, used) VALUES (?, ?)", rows)


def has_key(conn: sqlite3.Connection, key: bytes) -> bool:
    return conn.execute("SELECT 1 FROM dedupe WHERE key = ?", (key,)).fetchone() is not None
