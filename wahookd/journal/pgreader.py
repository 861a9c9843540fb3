"""The PostgreSQL journal as the CLI reads and changes it: `JournalReader` and
`JournalMaintenance` of `state.backend = "postgres"`, method for method, safe beside every
running node (each change is one short transaction; positions are handed out under the
``journal_state`` row's lock, as the nodes' writers do).

`fsck`'s page-level checks are SQLite's (`PRAGMA integrity_check`, the WAL): PostgreSQL
checks its own pages, so `integrity()` has nothing to add and `checkpoint()` nothing to do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg

from wahookd.errors import JournalError, WahookdError
from wahookd.events import event_ref, load_json
from wahookd.journal.maintenance import ContactRows, Erasure, WaitingRow
from wahookd.journal.pgschema import connect, describe, migrate
from wahookd.journal.records import CONTACT_FIELDS, JournalFigures, SinkRecord, StoredEvent
from wahookd.journal.schema import encode


def contact_clause() -> str:
    """Events (or dead letters) one of whose contact fields is in the array `%(addresses)s`."""
    return (
        "("
        + " OR ".join(
            f"coalesce((body::jsonb ->> '{field}') = ANY(%(addresses)s), false)" for field in CONTACT_FIELDS
        )
        + ")"
    )


class PgMaintenance:
    """`JournalMaintenance` on PostgreSQL (the one owner of the CLI's SQL there)."""

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self.conn = conn
        self.url = url

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()  # type: ignore[arg-type] # fixed texts
        except psycopg.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from None

    def _one(self, sql: str, params: Any = ()) -> Any:
        rows = self._rows(sql, params)
        return rows[0][0] if rows else None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.conn.transaction():
                yield self.conn
        except psycopg.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from None

    # -- reads (trace) -------------------------------------------------------------

    def _events(self, where: str, params: dict[str, Any], limit: int) -> list[StoredEvent]:
        rows = self._rows(
            "SELECT seq, dseq, received_at, body FROM events "  # noqa: S608 - fixed clauses
            f"WHERE {where} ORDER BY seq DESC LIMIT %(limit)s",
            {**params, "limit": limit},
        )
        return [StoredEvent(int(seq), dseq, float(at), load_json(body)) for seq, dseq, at, body in rows]

    def by_id(self, event_id: str) -> list[StoredEvent]:
        return self._events("id = %(id)s", {"id": event_id}, 1)

    def by_message_id(self, message_id: str, limit: int) -> list[StoredEvent]:
        return self._events("(body::jsonb ->> 'message_id') = %(id)s", {"id": message_id}, limit)

    def by_contact(self, contact: str, limit: int) -> list[StoredEvent]:
        return self._events(contact_clause(), {"addresses": [contact]}, limit)

    def by_ref(self, ref: str, limit: int) -> list[StoredEvent]:
        seqs = [
            int(seq)
            for seq, event_id in self._rows("SELECT seq, id FROM events")
            if event_ref(event_id) == ref
        ]
        if not seqs:
            return []
        return self._events("seq = ANY(%(seqs)s)", {"seqs": seqs[:limit]}, limit)

    def dead_letters_of(self, event_id: str) -> list[tuple[str, dict[str, Any], float]]:
        rows = self._rows(
            "SELECT sink, body, failed_at FROM dead_letters WHERE event_id = %s ORDER BY id", (event_id,)
        )
        return [(str(sink), load_json(body), float(at)) for sink, body, at in rows]

    def sink_record(self, sink: str, stored: StoredEvent) -> SinkRecord:
        event_id = stored.event.get("id", "")
        cursor_value = self._one("SELECT dseq FROM cursors WHERE sink = %s", (sink,))
        cursor = None if cursor_value is None else int(cursor_value)
        delivered_at = None
        if stored.dseq is not None and cursor is not None and stored.dseq <= cursor:
            delivered_at = self._one(
                "SELECT min(at) FROM deliveries WHERE sink = %s AND dseq >= %s", (sink, stored.dseq)
            )
        retry = self._rows(
            "SELECT attempts, next_try, last_error FROM retries WHERE sink = %s AND event_id = %s",
            (sink, event_id),
        )
        dead = self._rows(
            "SELECT attempts, error, failed_at FROM dead_letters WHERE sink = %s AND event_id = %s "
            "ORDER BY id DESC LIMIT 1",
            (sink, event_id),
        )
        paused = bool(self._rows("SELECT 1 FROM pauses WHERE sink = %s", (sink,)))
        return SinkRecord(
            cursor,
            delivered_at,
            None if not retry else (int(retry[0][0]), float(retry[0][1]), str(retry[0][2])),
            None if not dead else (int(dead[0][0]), str(dead[0][1]), float(dead[0][2])),
            paused,
        )

    def cursors(self) -> dict[str, int]:
        return {str(sink): int(dseq) for sink, dseq in self._rows("SELECT sink, dseq FROM cursors")}

    def end(self) -> int:
        return int(self._one("SELECT last_dseq FROM journal_state WHERE id = 1") or 0)

    # -- status ------------------------------------------------------------------------

    def figures(self) -> JournalFigures:
        counts = self._rows(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM events WHERE dseq IS NULL), "
            "(SELECT min(received_at) FROM events WHERE dseq IS NULL), "
            "(SELECT dedupe_entries FROM journal_state WHERE id = 1), "
            "(SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            " JOIN pg_namespace n ON n.oid = c.relnamespace "
            " WHERE n.nspname = current_schema() AND c.relkind = 'r')"
        )[0]
        holders = {
            str(name).removeprefix("sink:"): str(holder)
            for name, holder in self._rows(
                "SELECT name, holder FROM leases WHERE expires_at > now() AND name LIKE 'sink:%%'"
            )
        }
        return JournalFigures(
            location=describe(self.url),
            bytes=int(counts[4] or 0),
            events=int(counts[0]),
            media_pending=int(counts[1]),
            media_oldest=counts[2],
            dedupe_entries=int(counts[3] or 0),
            cursors=self.cursors(),
            dead_letters={
                str(sink): int(n)
                for sink, n in self._rows("SELECT sink, count(*) FROM dead_letters GROUP BY sink")
            },
            paused={str(row[0]) for row in self._rows("SELECT sink FROM pauses")},
            holders=holders,
        )

    def backlog(self, cursor: int) -> tuple[int, float | None]:
        count, oldest = self._rows(
            "SELECT count(*), min(received_at) FROM events WHERE dseq > %s", (cursor,)
        )[0]
        return int(count), oldest

    # -- replay ----------------------------------------------------------------------

    def dead_letter_page(self, sink: str, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        rows = self._rows(
            "SELECT id, body FROM dead_letters WHERE sink = %s AND id > %s ORDER BY id LIMIT %s",
            (sink, after, limit),
        )
        return [(int(dead_id), load_json(body)) for dead_id, body in rows]

    def ready_page(self, after: int, since: float, limit: int) -> list[tuple[int, dict[str, Any]]]:
        rows = self._rows(
            "SELECT dseq, body FROM events WHERE dseq > %s AND received_at >= %s ORDER BY dseq LIMIT %s",
            (after, since, limit),
        )
        return [(int(dseq), load_json(body)) for dseq, body in rows]

    def count_dead_letters(self, sink: str) -> int:
        return int(self._one("SELECT count(*) FROM dead_letters WHERE sink = %s", (sink,)))

    def count_ready(self, since: float) -> int:
        return int(
            self._one("SELECT count(*) FROM events WHERE dseq IS NOT NULL AND received_at >= %s", (since,))
        )

    def note_replay_failure(self, dead_id: int, attempts: int, error: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE dead_letters SET attempts = attempts + %s, error = %s, failed_at = %s WHERE id = %s",
                (attempts, error, time.time(), dead_id),
            )

    def delete_dead_letter_ids(self, ids: list[int]) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM dead_letters WHERE id = ANY(%s)", (ids,))

    # -- pause, the benchmark ------------------------------------------------------

    def set_pause(self, sink: str, paused: bool) -> bool:
        with self._transaction() as conn:
            if paused:
                changed = conn.execute(
                    "INSERT INTO pauses (sink, paused_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (sink, time.time()),
                ).rowcount
            else:
                changed = conn.execute("DELETE FROM pauses WHERE sink = %s", (sink,)).rowcount
        return bool(changed)

    def has_dedupe_key(self, key: bytes) -> bool:
        return bool(self._rows("SELECT 1 FROM dedupe WHERE key = %s", (key,)))

    def fill_dedupe(self, rows: Iterable[tuple[bytes, int]]) -> None:
        keys = [key for key, _used in rows]
        with self._transaction() as conn:
            added = conn.execute(
                "INSERT INTO dedupe (key, used) SELECT k, nextval('dedupe_used') "
                "FROM unnest(%s::bytea[]) AS k "
                "ON CONFLICT DO NOTHING",
                (keys,),
            ).rowcount
            conn.execute(
                "UPDATE journal_state SET dedupe_entries = dedupe_entries + %s WHERE id = 1", (added,)
            )

    # -- forget ------------------------------------------------------------------------

    def contact_rows(
        self, addresses: tuple[str, ...], after_seq: int = 0, after_dead: int = 0
    ) -> ContactRows:
        params = {"addresses": list(addresses)}
        scanned_seq = max(int(self._one("SELECT coalesce(max(seq), 0) FROM events")), after_seq)
        scanned_dead = max(int(self._one("SELECT coalesce(max(id), 0) FROM dead_letters")), after_dead)
        rows = self._rows(
            "SELECT seq, dseq, received_at, body FROM events "  # noqa: S608 - fixed clause
            f"WHERE seq > %(after)s AND seq <= %(upto)s AND {contact_clause()} ORDER BY seq",
            {**params, "after": after_seq, "upto": scanned_seq},
        )
        dead = self._rows(
            "SELECT id, body FROM dead_letters "  # noqa: S608 - fixed clause
            f"WHERE id > %(after)s AND id <= %(upto)s AND {contact_clause()} "
            "ORDER BY id",
            {**params, "after": after_dead, "upto": scanned_dead},
        )
        return ContactRows(
            [StoredEvent(int(seq), dseq, float(at), load_json(body)) for seq, dseq, at, body in rows],
            [(int(dead_id), load_json(body)) for dead_id, body in dead],
            scanned_seq,
            scanned_dead,
        )

    def waiting_seqs(self, seqs: Iterable[int]) -> set[int]:
        return {
            int(row[0])
            for row in self._rows(
                "SELECT seq FROM events WHERE dseq IS NULL AND seq = ANY(%s)", (list(seqs),)
            )
        }

    def media_kept_by_others(
        self, addresses: tuple[str, ...], keys: Iterable[tuple[str | None, str]]
    ) -> set[tuple[str | None, str]]:
        wanted = sorted({key for _bucket, key in keys})
        kept: set[tuple[str | None, str]] = set()
        for table in ("events", "dead_letters"):
            rows = self._rows(
                "SELECT body::jsonb #>> '{media,stored,bucket}', body::jsonb #>> '{media,stored,key}' "  # noqa: S608 - fixed clauses
                f"FROM {table} WHERE (body::jsonb #>> '{{media,stored,key}}') = ANY(%(keys)s) "
                f"AND NOT {contact_clause()}",
                {"keys": wanted, "addresses": list(addresses)},
            )
            kept.update((bucket, key) for bucket, key in rows)
        return kept

    def erase_contact(
        self, addresses: tuple[str, ...], found: ContactRows, forget_event: dict[str, Any]
    ) -> Erasure:
        """As `JournalMaintenance.erase_contact`: in one transaction, the forget event
        journaled without a position (the media stage of the node holding that lease gives it
        one, so every sink receives it)."""
        with self._transaction() as conn:
            tail = self.contact_rows(addresses, found.scanned_seq, found.scanned_dead)
            seqs = [stored.seq for stored in (*found.events, *tail.events)]
            dead_ids = [dead_id for dead_id, _ in (*found.dead_letters, *tail.dead_letters)]
            passed = min(self.cursors().values(), default=0)
            events: list[dict[str, Any]] = []
            dead_letters: list[dict[str, Any]] = []
            event_ids: set[str] = set()
            for _seq, dseq, event_id, body in conn.execute(
                "DELETE FROM events WHERE seq = ANY(%s) RETURNING seq, dseq, id, body", (seqs,)
            ).fetchall():
                events.append(load_json(body))
                event_ids.add(event_id)
                if dseq is not None and dseq > passed:
                    conn.execute("INSERT INTO erased (dseq) VALUES (%s) ON CONFLICT DO NOTHING", (dseq,))
            for event_id, body in conn.execute(
                "DELETE FROM dead_letters WHERE id = ANY(%s) RETURNING event_id, body", (dead_ids,)
            ).fetchall():
                dead_letters.append(load_json(body))
                event_ids.add(event_id)
            retries = conn.execute(
                "DELETE FROM retries WHERE event_id = ANY(%s)", (sorted(event_ids),)
            ).rowcount
            row = conn.execute(
                "INSERT INTO events (id, source, kind, received_at, dseq, body) "
                "VALUES (%s, %s, %s, %s, NULL, %s) "
                "RETURNING seq",
                (
                    forget_event["id"],
                    forget_event["source"],
                    forget_event["kind"],
                    time.time(),
                    encode(forget_event),
                ),
            ).fetchone()
        return Erasure(events, dead_letters, int(retries), int(row[0]) if row else 0)

    # -- fsck ----------------------------------------------------------------------------

    def integrity(self, limit: int = 50) -> list[str]:
        """SQLite-only (PRAGMA integrity_check): PostgreSQL checks its own pages."""
        return []

    def reindex(self) -> None:
        with self._transaction() as conn:
            conn.execute("REINDEX TABLE events")

    def duplicate_positions(self) -> list[tuple[int, list[int]]]:
        rows = self._rows(
            "SELECT dseq, array_agg(seq ORDER BY seq) FROM events WHERE dseq IS NOT NULL "
            "GROUP BY dseq HAVING count(*) > 1 ORDER BY dseq"
        )
        return [(int(dseq), [int(seq) for seq in seqs]) for dseq, seqs in rows]

    def missing_positions(self, above: int) -> list[tuple[int, int]]:
        gaps = []
        expected = above + 1
        for (dseq,) in self._rows(
            "SELECT dseq FROM events WHERE dseq > %s "
            "UNION SELECT dseq FROM erased WHERE dseq > %s ORDER BY 1",
            (above, above),
        ):
            if dseq > expected:
                gaps.append((expected, dseq - 1))
            expected = dseq + 1
        return gaps

    def waiting_rows(self) -> list[WaitingRow]:
        rows = self._rows("SELECT seq, id, received_at, body FROM events WHERE dseq IS NULL ORDER BY seq")
        return [WaitingRow(int(seq), str(event_id), float(at), str(body)) for seq, event_id, at, body in rows]

    def sink_rows(self) -> tuple[dict[str, int], dict[str, int]]:
        dead = {
            str(s): int(n) for s, n in self._rows("SELECT sink, count(*) FROM dead_letters GROUP BY sink")
        }
        retries = {str(s): int(n) for s, n in self._rows("SELECT sink, count(*) FROM retries GROUP BY sink")}
        return dead, retries

    def dead_letter_rows(self, sink: str) -> list[dict[str, Any]]:
        columns = ("id", "sink", "seq", "event_id", "attempts", "error", "failed_at", "body")
        rows = self._rows(
            f"SELECT {', '.join(columns)} FROM dead_letters WHERE sink = %s ORDER BY id",  # noqa: S608 - fixed columns
            (sink,),
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def delete_dead_letters(self, sink: str, up_to_id: int) -> int:
        with self._transaction() as conn:
            return int(
                conn.execute(
                    "DELETE FROM dead_letters WHERE sink = %s AND id <= %s", (sink, up_to_id)
                ).rowcount
            )

    def delete_retries(self, sink: str) -> int:
        with self._transaction() as conn:
            return int(conn.execute("DELETE FROM retries WHERE sink = %s", (sink,)).rowcount)

    def set_cursor(self, sink: str, dseq: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO cursors (sink, dseq) VALUES (%s, %s) "
                "ON CONFLICT (sink) DO UPDATE SET dseq = excluded.dseq",
                (sink, dseq),
            )

    def give_position(self, seq: int) -> int:
        with self._transaction() as conn:
            row = conn.execute(
                "UPDATE journal_state SET last_dseq = last_dseq + 1 WHERE id = 1 RETURNING last_dseq"
            ).fetchone()
            dseq = int(row[0]) if row else 0
            conn.execute("UPDATE events SET dseq = %s WHERE seq = %s", (dseq, seq))
        return dseq

    def take_row(self, seq: int) -> dict[str, Any] | None:
        columns = ("seq", "id", "source", "kind", "received_at", "dseq", "body")
        with self._transaction() as conn:
            row = conn.execute(
                f"DELETE FROM events WHERE seq = %s RETURNING {', '.join(columns)}",  # noqa: S608 - fixed columns
                (seq,),
            ).fetchone()
        return None if row is None else dict(zip(columns, row, strict=True))

    def checkpoint(self) -> tuple[int, int, int]:
        """SQLite-only (the WAL): nothing to do on PostgreSQL."""
        return 0, 0, 0


def open_pg_store(url: str, *, write: bool = False) -> PgMaintenance:
    """The PostgreSQL journal for a CLI command (migrated first, like a node would)."""
    try:
        conn = connect(url)
    except JournalError as exc:
        raise WahookdError(str(exc)) from None
    migrate(conn)
    if not write:
        conn.execute("SET default_transaction_read_only = on")
    return PgMaintenance(conn, url)
