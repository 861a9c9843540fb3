"""What the CLI changes in the journal: `forget`, `fsck --repair`, `pause`, `replay`'s
bookkeeping of dead letters. The one owner of that SQL (see `JournalMaintenance`)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wahookd.errors import JournalError
from wahookd.events import load_json
from wahookd.journal import dedupe
from wahookd.journal.reader import JournalReader, open_connection, set_pause
from wahookd.journal.records import CONTACT_FIELDS, StoredEvent
from wahookd.journal.schema import (
    ERASED_SCHEMA,
    JOURNAL_FILE,
    encode,
    high_water,
    max_cursor,
    raise_high_water,
)


def contact_clause(addresses: int) -> str:
    """Events (or dead letters) one of whose contact fields is one of `addresses` `?`s
    (given once per field). Never NULL, so that NOT of it is exact; a body that is not JSON
    (a torn disk) matches nothing instead of failing the whole statement."""
    marks = ",".join("?" * addresses)
    fields = " OR ".join(
        f"coalesce(json_extract(body, '$.\"{field}\"') IN ({marks}), 0)" for field in CONTACT_FIELDS
    )
    return f"(CASE WHEN json_valid(body) THEN ({fields}) ELSE 0 END)"


MAINTENANCE_CHUNK = 200  # ids per IN (...) list: well within SQLite's parameter limit


@dataclass(frozen=True, slots=True)
class ContactRows:
    """A contact's events and dead letters, as one scan found them."""

    events: list[StoredEvent]
    dead_letters: list[tuple[int, dict[str, Any]]]  # dead letter id, the event
    scanned_seq: int  # events up to this seq were scanned; later ones come in `erase_contact`
    scanned_dead: int


@dataclass(slots=True)
class Erasure:
    """What `JournalMaintenance.erase_contact` deleted."""

    events: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    retries: int
    forget_seq: int


@dataclass(frozen=True, slots=True)
class WaitingRow:
    """An event with no delivery position (waiting for its media)."""

    seq: int
    event_id: str
    received_at: float
    body: str


class JournalMaintenance(JournalReader):
    """What the CLI changes in the journal: `forget` beside a running daemon (a second
    writer: each change is one short `BEGIN IMMEDIATE` transaction, which the daemon's
    writer waits for under its busy timeout) and `fsck --repair` with the daemon stopped.
    The one owner of that SQL; the connection is the caller's, opened for writing."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None) -> None:
        super().__init__(conn, path)
        with contextlib.suppress(sqlite3.OperationalError):  # a read-only connection (fsck)
            conn.executescript(ERASED_SCHEMA)

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- forget ----------------------------------------------------------------

    def contact_rows(
        self, addresses: tuple[str, ...], after_seq: int = 0, after_dead: int = 0
    ) -> ContactRows:
        """The events (seq > `after_seq`) and dead letters (id > `after_dead`) of a contact,
        which any of `addresses` names (its phone digits, its JIDs, or its LID).

        Outside a transaction this is a plain read, however long the journal: the daemon
        goes on committing meanwhile, and `erase_contact` rescans only what came after."""
        params = addresses * len(CONTACT_FIELDS)
        clause = contact_clause(len(addresses))
        scanned_seq = int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        scanned_dead = int(self.conn.execute("SELECT coalesce(max(id), 0) FROM dead_letters").fetchone()[0])
        rows = self.conn.execute(
            "SELECT seq, dseq, received_at, body FROM events "  # noqa: S608 - fixed clause
            f"WHERE seq > ? AND seq <= ? AND {clause} ORDER BY seq",
            (after_seq, max(scanned_seq, after_seq), *params),
        ).fetchall()
        dead = self.conn.execute(
            f"SELECT id, body FROM dead_letters WHERE id > ? AND id <= ? AND {clause} ORDER BY id",  # noqa: S608 - fixed clause
            (after_dead, max(scanned_dead, after_dead), *params),
        ).fetchall()
        return ContactRows(
            [StoredEvent(seq, dseq, received, load_json(body)) for seq, dseq, received, body in rows],
            [(int(dead_id), load_json(body)) for dead_id, body in dead],
            max(scanned_seq, after_seq),
            max(scanned_dead, after_dead),
        )

    def waiting_seqs(self, seqs: Iterable[int]) -> set[int]:
        """Which of `seqs` still have no delivery position."""
        waiting: set[int] = set()
        wanted = list(seqs)
        for start in range(0, len(wanted), MAINTENANCE_CHUNK):
            part = wanted[start : start + MAINTENANCE_CHUNK]
            marks = ",".join("?" * len(part))
            waiting.update(
                row[0]
                for row in self.conn.execute(
                    f"SELECT seq FROM events WHERE dseq IS NULL AND seq IN ({marks})",  # noqa: S608 - marks only
                    part,
                )
            )
        return waiting

    def media_kept_by_others(
        self, addresses: tuple[str, ...], keys: Iterable[tuple[str | None, str]]
    ) -> set[tuple[str | None, str]]:
        """Which stored objects (bucket, key) an event or dead letter of someone else also
        points at: keys come from the content's hash, so two people who sent the same file
        the same day share one object, and it stays."""
        wanted = sorted({key for _bucket, key in keys})
        kept: set[tuple[str | None, str]] = set()
        params = addresses * len(CONTACT_FIELDS)
        clause = contact_clause(len(addresses))
        for table in ("events", "dead_letters"):
            for start in range(0, len(wanted), MAINTENANCE_CHUNK):
                part = wanted[start : start + MAINTENANCE_CHUNK]
                marks = ",".join("?" * len(part))
                rows = self.conn.execute(
                    "SELECT json_extract(body, '$.media.stored.bucket'), "  # noqa: S608 - fixed clauses
                    f"json_extract(body, '$.media.stored.key') FROM {table} WHERE json_valid(body) "
                    f"AND json_extract(body, '$.media.stored.key') IN ({marks}) AND NOT {clause}",
                    (*part, *params),
                ).fetchall()
                kept.update((bucket, key) for bucket, key in rows)
        return kept

    def erase_contact(
        self, addresses: tuple[str, ...], found: ContactRows, forget_event: dict[str, Any]
    ) -> Erasure:
        """In one transaction: delete the events and dead letters `found` (and those that
        came after its scan), the `retries` rows of their ids, and journal `forget_event`
        with no delivery position, as an event waiting for media is: the running daemon's
        media stage gives it the next position (this process must not: the daemon's writer
        numbers events from memory), so every sink receives it. Dedupe keys stay: those that
        only the erased rows held (not merged yet, `dedupe.UnmergedKeys`) go into the index."""
        with self._transaction() as conn:
            tail = self.contact_rows(addresses, found.scanned_seq, found.scanned_dead)
            seqs = [stored.seq for stored in (*found.events, *tail.events)]
            dead_ids = [dead_id for dead_id, _ in (*found.dead_letters, *tail.dead_letters)]
            # Above every seq ever given out, so the media stage, which remembers the seqs
            # it finished lately, cannot take this one for an event it has done.
            forget_seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]) + 1
            events: list[dict[str, Any]] = []
            dead_letters: list[dict[str, Any]] = []
            event_ids: set[str] = set()
            passed = min(self.cursors().values(), default=0)
            used = int(conn.execute("SELECT coalesce(max(used), 0) FROM dedupe").fetchone()[0])
            keys: list[tuple[bytes, int]] = []
            for start in range(0, len(seqs), MAINTENANCE_CHUNK):
                part = seqs[start : start + MAINTENANCE_CHUNK]
                marks = ",".join("?" * len(part))
                # Read again under the lock: the media stage may have finished one since the
                # scan (a position and `media.stored` of its own).
                rows = conn.execute(
                    f"SELECT seq, dseq, id, source, body FROM events WHERE seq IN ({marks})",  # noqa: S608 - marks only
                    part,
                ).fetchall()
                for _seq, dseq, event_id, source, body in rows:
                    events.append(load_json(body))
                    event_ids.add(event_id)
                    keys.append((dedupe.dedupe_key(source, event_id), used))
                    if dseq is not None:
                        raise_high_water(conn, dseq)
                        if dseq > passed:
                            conn.execute("INSERT OR IGNORE INTO erased (dseq) VALUES (?)", (dseq,))
                conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", part)  # noqa: S608 - marks only
            dedupe.merge_rows(conn, keys)
            for start in range(0, len(dead_ids), MAINTENANCE_CHUNK):
                part = dead_ids[start : start + MAINTENANCE_CHUNK]
                marks = ",".join("?" * len(part))
                for event_id, body in conn.execute(
                    f"SELECT event_id, body FROM dead_letters WHERE id IN ({marks})",  # noqa: S608 - marks only
                    part,
                ):
                    dead_letters.append(load_json(body))
                    event_ids.add(event_id)
                conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", part)  # noqa: S608 - marks only
            retries = 0
            ids = sorted(event_ids)
            for start in range(0, len(ids), MAINTENANCE_CHUNK):
                part = ids[start : start + MAINTENANCE_CHUNK]
                marks = ",".join("?" * len(part))
                retries += conn.execute(
                    f"DELETE FROM retries WHERE event_id IN ({marks})",  # noqa: S608 - marks only
                    part,
                ).rowcount
            conn.execute(
                "INSERT INTO events (seq, id, source, kind, received_at, dseq, body) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (
                    forget_seq,
                    forget_event["id"],
                    forget_event["source"],
                    forget_event["kind"],
                    time.time(),
                    encode(forget_event),
                ),
            )
        return Erasure(events, dead_letters, retries, forget_seq)

    # -- fsck --------------------------------------------------------------------

    def integrity(self, limit: int = 50) -> list[str]:
        """SQLite's own check of every page, index and constraint: [] when sound."""
        rows = [str(row[0]) for row in self.conn.execute(f"PRAGMA integrity_check({int(limit)})")]
        return [] if rows == ["ok"] else rows

    def reindex(self) -> None:
        self.conn.execute("REINDEX")

    def duplicate_positions(self) -> list[tuple[int, list[int]]]:
        """Delivery positions held by more than one event: (dseq, their seqs). Read past
        the unique index on purpose: it is what a damaged file gets wrong."""
        rows = self.conn.execute(
            "SELECT dseq, group_concat(seq) FROM events NOT INDEXED WHERE dseq IS NOT NULL "
            "GROUP BY dseq HAVING count(*) > 1 ORDER BY dseq"
        ).fetchall()
        return [(int(dseq), sorted(int(seq) for seq in seqs.split(","))) for dseq, seqs in rows]

    def missing_positions(self, above: int) -> list[tuple[int, int]]:
        """Ranges (first, last) of delivery positions above `above` and below the end that
        no event holds and `forget` did not erase."""
        gaps = []
        expected = above + 1
        erased = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'erased'").fetchone()
        sql = "SELECT dseq FROM events WHERE dseq > ?"
        if erased:
            sql += " UNION SELECT dseq FROM erased WHERE dseq > ? ORDER BY 1"
        else:
            sql += " AND ? IS NOT NULL ORDER BY 1"
        for (dseq,) in self.conn.execute(sql, (above, above)):
            if dseq > expected:
                gaps.append((expected, dseq - 1))
            expected = dseq + 1
        return gaps

    def waiting_rows(self) -> list[WaitingRow]:
        """Every event without a delivery position, oldest first."""
        rows = self.conn.execute(
            "SELECT seq, id, received_at, body FROM events WHERE dseq IS NULL ORDER BY seq"
        ).fetchall()
        return [WaitingRow(int(seq), str(event_id), float(at), str(body)) for seq, event_id, at, body in rows]

    def sink_rows(self) -> tuple[dict[str, int], dict[str, int]]:
        """Dead letters and `retries` rows per sink."""
        dead = dict(self.conn.execute("SELECT sink, count(*) FROM dead_letters GROUP BY sink").fetchall())
        retries = dict(self.conn.execute("SELECT sink, count(*) FROM retries GROUP BY sink").fetchall())
        return dead, retries

    def dead_letter_rows(self, sink: str) -> list[dict[str, Any]]:
        """A sink's dead letters as rows (to keep them in a file before they go)."""
        columns = ("id", "sink", "seq", "event_id", "attempts", "error", "failed_at", "body")
        rows = self.conn.execute(
            f"SELECT {', '.join(columns)} FROM dead_letters WHERE sink = ? ORDER BY id",  # noqa: S608 - fixed columns
            (sink,),
        ).fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def delete_dead_letters(self, sink: str, up_to_id: int) -> int:
        with self._transaction() as conn:
            return int(
                conn.execute("DELETE FROM dead_letters WHERE sink = ? AND id <= ?", (sink, up_to_id)).rowcount
            )

    def delete_retries(self, sink: str) -> int:
        with self._transaction() as conn:
            return int(conn.execute("DELETE FROM retries WHERE sink = ?", (sink,)).rowcount)

    def set_cursor(self, sink: str, dseq: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO cursors (sink, dseq) VALUES (?, ?) "
                "ON CONFLICT(sink) DO UPDATE SET dseq = excluded.dseq",
                (sink, dseq),
            )

    def give_position(self, seq: int) -> int:
        """Give the event the next delivery position (only with the daemon stopped: a
        running one numbers events from memory). Returns it."""
        with self._transaction() as conn:
            dseq = max(high_water(conn), max_cursor(conn)) + 1
            conn.execute("UPDATE events SET dseq = ? WHERE seq = ?", (dseq, seq))
        return dseq

    def take_row(self, seq: int) -> dict[str, Any] | None:
        """Delete one event row and return it as it was (to keep it in a file)."""
        columns = ("seq", "id", "source", "kind", "received_at", "dseq", "body")
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {', '.join(columns)} FROM events WHERE seq = ?",  # noqa: S608 - fixed columns
                (seq,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
        return dict(zip(columns, row, strict=True))

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database and empty it: (busy, frames, copied)."""
        busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy), int(frames), int(copied)

    # -- pause, replay, the benchmark ----------------------------------------------

    def set_pause(self, sink: str, paused: bool) -> bool:
        """`wahookd pause`/`resume`; True when it changed."""
        try:
            return set_pause(self.conn, sink, paused)
        except sqlite3.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from None

    def note_replay_failure(self, dead_id: int, attempts: int, error: str) -> None:
        """A dead letter that `replay` could not deliver either: count its tries."""
        self.conn.execute(
            "UPDATE dead_letters SET attempts = attempts + ?, error = ?, failed_at = ? WHERE id = ?",
            (attempts, error, time.time(), dead_id),
        )

    def delete_dead_letter_ids(self, ids: list[int]) -> None:
        """Dead letters `replay` delivered (after the sink flushed them)."""
        self.conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(dead_id,) for dead_id in ids])

    def fill_dedupe(self, rows: Iterable[tuple[bytes, int]]) -> None:
        """Insert (key, used) rows into the dedupe index (the benchmark's pre-fill)."""
        with self._transaction() as conn:
            dedupe.fill(conn, rows)


def open_sqlite_store(state_dir: Path, *, write: bool = False) -> JournalMaintenance:
    """The journal of `state_dir` for a CLI command: read-only unless `write`.
    Missing → `WahookdError`. The caller closes it."""
    path = Path(state_dir) / JOURNAL_FILE
    return JournalMaintenance(open_connection(Path(state_dir), write=write), path)
