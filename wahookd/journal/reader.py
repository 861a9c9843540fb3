"""The journal as the CLI reads it, safely beside a running daemon: `status`, `replay`,
`trace` and the benchmark read through `JournalReader`, the one owner of these queries.

`open_store` opens a state directory's journal for them (read-only unless asked to write),
with SQLite's own locking: WAL, and a 5-second busy timeout.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from wahookd.errors import WahookdError
from wahookd.events import load_json
from wahookd.journal import dedupe
from wahookd.journal.records import CONTACT_FIELDS, JournalFigures, SinkRecord, StoredEvent
from wahookd.journal.schema import BUSY_TIMEOUT_MS, JOURNAL_FILE, high_water


def conn_file(conn: sqlite3.Connection) -> str:
    """The file of a connection's main database."""
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return str(file)
    return ""


def open_connection(state_dir: Path, *, write: bool = False) -> sqlite3.Connection:
    """Open ``<state_dir>/journal.db``; read-only unless `write`. Missing → `WahookdError`."""
    path = state_dir / JOURNAL_FILE
    if not path.exists():
        raise WahookdError(
            f"no journal at {path}: wahookd has not run with this state directory yet "
            "(check state.dir and --config)"
        )
    conn: sqlite3.Connection | None = None
    if not write:
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("SELECT 1 FROM events LIMIT 1")
        except sqlite3.Error:
            # Read-only WAL opening needs the -shm file or a writable directory; when it
            # is not possible, a normal connection that only reads is just as safe.
            conn = None
    if conn is None:
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("SELECT 1 FROM events LIMIT 1")
        except sqlite3.Error as exc:
            raise WahookdError(f"cannot read the journal {path}: {exc}") from None
    return conn


class JournalReader:
    """The journal as the CLI reads it, safely beside a running daemon (`trace`): the one
    owner of these queries. Each method is one read; the connection is the caller's."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None) -> None:
        self.conn = conn
        self.path = path if path is not None else Path(conn_file(conn))

    def _events(self, where: str, params: tuple[Any, ...], limit: int) -> list[StoredEvent]:
        rows = self.conn.execute(
            f"SELECT seq, dseq, received_at, body FROM events WHERE {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608 - fixed clauses
            (*params, limit),
        ).fetchall()
        return [StoredEvent(seq, dseq, received_at, load_json(body)) for seq, dseq, received_at, body in rows]

    def by_id(self, event_id: str) -> list[StoredEvent]:
        return self._events("id = ?", (event_id,), 1)

    def by_message_id(self, message_id: str, limit: int) -> list[StoredEvent]:
        return self._events("json_extract(body, '$.message_id') = ?", (message_id,), limit)

    def by_contact(self, contact: str, limit: int) -> list[StoredEvent]:
        clause = " OR ".join(f"json_extract(body, '$.\"{field}\"') = ?" for field in CONTACT_FIELDS)
        return self._events(f"({clause})", (contact,) * len(CONTACT_FIELDS), limit)

    def by_ref(self, ref: str, limit: int) -> list[StoredEvent]:
        """Events whose `event_ref` (a hash of the id, as log lines name them) is `ref`."""
        from wahookd.events import event_ref

        seqs = [
            seq
            for seq, event_id in self.conn.execute("SELECT seq, id FROM events")
            if event_ref(event_id) == ref
        ]
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs[:limit]))
        return self._events(f"seq IN ({marks})", tuple(seqs[:limit]), limit)

    def dead_letters_of(self, event_id: str) -> list[tuple[str, dict[str, Any], float]]:
        """Dead letters of an event whose journal row is gone (pruned): sink, event, when."""
        rows = self.conn.execute(
            "SELECT sink, body, failed_at FROM dead_letters WHERE event_id = ? ORDER BY id", (event_id,)
        ).fetchall()
        return [(sink, load_json(body), failed_at) for sink, body, failed_at in rows]

    def sink_record(self, sink: str, stored: StoredEvent) -> SinkRecord:
        event_id = stored.event.get("id", "")
        cursor_row = self.conn.execute("SELECT dseq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        cursor = None if cursor_row is None else int(cursor_row[0])
        delivered_at = None
        if stored.dseq is not None and cursor is not None and stored.dseq <= cursor:
            row = self.conn.execute(
                "SELECT min(at) FROM deliveries WHERE sink = ? AND dseq >= ?", (sink, stored.dseq)
            ).fetchone()
            delivered_at = row[0]
        retry = self.conn.execute(
            "SELECT attempts, next_try, last_error FROM retries WHERE sink = ? AND event_id = ?",
            (sink, event_id),
        ).fetchone()
        dead = self.conn.execute(
            "SELECT attempts, error, failed_at FROM dead_letters WHERE sink = ? AND event_id = ? "
            "ORDER BY id DESC",
            (sink, event_id),
        ).fetchone()
        paused = self.conn.execute("SELECT 1 FROM pauses WHERE sink = ?", (sink,)).fetchone() is not None
        return SinkRecord(
            cursor,
            delivered_at,
            None if retry is None else (int(retry[0]), float(retry[1]), str(retry[2])),
            None if dead is None else (int(dead[0]), str(dead[1]), float(dead[2])),
            paused,
        )

    def cursors(self) -> dict[str, int]:
        """Each sink's position."""
        return {str(sink): int(dseq) for sink, dseq in self.conn.execute("SELECT sink, dseq FROM cursors")}

    def end(self) -> int:
        """The last delivery position handed out (`high_water`)."""
        return high_water(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- status ------------------------------------------------------------------

    def figures(self) -> JournalFigures:
        """What `wahookd status` shows of the journal as a whole."""

        def one(sql: str, *params: Any) -> Any:
            return self.conn.execute(sql, params).fetchone()[0]

        size = sum(
            candidate.stat().st_size
            for candidate in (self.path, self.path.with_name(self.path.name + "-wal"))
            if candidate.exists()
        )
        try:
            paused = paused_sinks(self.conn)
        except sqlite3.OperationalError:  # a journal this version has not opened yet
            paused = set()
        return JournalFigures(
            location=str(self.path),
            bytes=size,
            events=one("SELECT count(*) FROM events"),
            media_pending=one("SELECT count(*) FROM events WHERE dseq IS NULL"),
            media_oldest=one("SELECT min(received_at) FROM events WHERE dseq IS NULL"),
            dedupe_entries=one("SELECT count(*) FROM dedupe") + dedupe.unmerged_count(self.conn),
            cursors=self.cursors(),
            dead_letters=dict(self.conn.execute("SELECT sink, count(*) FROM dead_letters GROUP BY sink")),
            paused=paused,
            holders={},
        )

    def backlog(self, cursor: int) -> tuple[int, float | None]:
        """Events past `cursor`: how many, and when the oldest of them was received."""
        count, oldest = self.conn.execute(
            "SELECT count(*), min(received_at) FROM events WHERE dseq > ?", (cursor,)
        ).fetchone()
        return int(count), oldest

    # -- replay --------------------------------------------------------------------

    def dead_letter_page(self, sink: str, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """A sink's dead letters with ids above `after`, in order: (id, event)."""
        rows = self.conn.execute(
            "SELECT id, body FROM dead_letters WHERE sink = ? AND id > ? ORDER BY id LIMIT ?",
            (sink, after, limit),
        ).fetchall()
        return [(int(dead_id), load_json(body)) for dead_id, body in rows]

    def ready_page(self, after: int, since: float, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Ready events after position `after` received since `since`: (dseq, event)."""
        rows = self.conn.execute(
            "SELECT dseq, body FROM events WHERE dseq > ? AND received_at >= ? ORDER BY dseq LIMIT ?",
            (after, since, limit),
        ).fetchall()
        return [(int(dseq), load_json(body)) for dseq, body in rows]

    def count_dead_letters(self, sink: str) -> int:
        return int(
            self.conn.execute("SELECT count(*) FROM dead_letters WHERE sink = ?", (sink,)).fetchone()[0]
        )

    def count_ready(self, since: float) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM events WHERE dseq IS NOT NULL AND received_at >= ?", (since,)
        ).fetchone()
        return int(row[0])

    # -- the benchmark -------------------------------------------------------------

    def has_dedupe_key(self, key: bytes) -> bool:
        return dedupe.has_key(self.conn, key)


def set_pause(conn: sqlite3.Connection, sink: str, paused: bool) -> bool:
    """`wahookd pause`/`resume`, from the CLI's own connection; True when it changed."""
    conn.execute("CREATE TABLE IF NOT EXISTS pauses (sink TEXT PRIMARY KEY, paused_at REAL NOT NULL)")
    if paused:
        changed = conn.execute(
            "INSERT OR IGNORE INTO pauses (sink, paused_at) VALUES (?, ?)", (sink, time.time())
        ).rowcount
    else:
        changed = conn.execute("DELETE FROM pauses WHERE sink = ?", (sink,)).rowcount
    return bool(changed)


def paused_sinks(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT sink FROM pauses")}
