"""The journal of one state directory, as the daemon uses it: events, the dedupe LRU, sink
positions, retries, pauses and dead letters, in one SQLite file (`schema.py`).

Writes go through the group-committing writer thread (`writer.py`); reads run on two
reader threads of their own. Memory stays bounded by bytes, not by event count: the
recent-events cache has a byte budget and leaves out large events, and one `read_ready`
returns at most `READ_BYTES` of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from wahookd.errors import JournalError
from wahookd.events import Event, load_json
from wahookd.journal import dedupe
from wahookd.journal.records import ReadyEvent
from wahookd.journal.schema import (
    ERASED_SCHEMA,
    FORGET_EVENT,
    JOURNAL_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    connect,
    encode,
    format_time_from,
    high_water,
    insert_rows,
    max_cursor,
    raise_high_water,
)
from wahookd.journal.writer import READ_BYTES, JournalWriter, _Job, name_os_thread

log = structlog.get_logger("wahookd.journal")


class Journal(JournalWriter):
    """The journal of one state directory. Open it, `commit` events, read them back in order."""

    def __init__(
        self,
        state_dir: Path,
        *,
        durable: bool = True,
        dedupe_capacity: int = 1_000_000,
        observe_commit: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(observe_commit=observe_commit)
        self.path = Path(state_dir) / JOURNAL_FILE
        self.durable = durable
        self.dedupe_capacity = dedupe_capacity
        self.last_dseq = 0
        self.dedupe_entries = 0
        self._used = 0
        self._unmerged = dedupe.UnmergedKeys(dedupe_capacity)
        self._last_seq = 0  # the last event's seq (writer thread)
        self._batch_last_seq = 0  # ... once the batch being written commits
        self._readers = ThreadPoolExecutor(
            max_workers=2,
            thread_name_prefix="journal-read",
            initializer=name_os_thread,
            initargs=("journal-read",),
        )
        self._local = threading.local()
        self._delivery_rows: dict[str, tuple[int, float]] = {}  # sink -> its latest (dseq, at)

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        """Create or check the schema and start the writer thread (blocking; before serving)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The writer's cache: a batch's dirty pages (a merge slice and the new events, under
        # 1 MB) and the index's inner pages; its leaves are read from the OS's cache.
        conn = connect(self.path, durable=self.durable, cache_kib=2048)
        conn.executescript(SCHEMA + ERASED_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise JournalError(f"{self.path}: schema version {row[0]}, expected {SCHEMA_VERSION}")
        # Never below a position already handed out: pruning (or `forget`) may have deleted
        # the last events, and a new event numbered at or below a sink's cursor would be
        # skipped by that sink for good.
        self.last_dseq = max(high_water(conn), max_cursor(conn))
        self._used, self.dedupe_entries = dedupe.usage(conn)
        self._used = self._unmerged.recover(conn, self._used)
        if self._unmerged.keys:
            log.info("journal_dedupe_recovered", keys=len(self._unmerged.keys))
        self.dedupe_entries += len(self._unmerged.keys)
        self._last_seq = self._batch_last_seq = int(
            conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        )
        self.start_writer(conn)

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(JournalError):
                await self._submit(lambda conn: None)  # everything submitted before is written
        self._closed = True
        await asyncio.to_thread(self.close_blocking)

    def close_blocking(self) -> None:
        """Stop the threads after the batches handed to the writer, and checkpoint.

        Jobs still waiting on the loop are not written: `close()` waits for them first.
        """
        self.stop_writer()
        self._readers.shutdown(wait=True)

    # -- intake ----------------------------------------------------------------

    def _insert_events(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[list[Event], int]]:
        """Commit the events of every intake job in the batch: (new events, duplicates) each.

        A few multi-row statements for the whole batch rather than two per event: every
        statement releases and retakes the GIL, which the event loop holds most of the time,
        and each of those hand-overs was a pair of context switches.
        """
        now = time.time()
        received_at = format_time_from(now)
        keys = [dedupe.dedupe_key(event.source, event.id) for job in jobs for event in job.events or ()]
        known = self._unmerged.known(conn, keys)
        touched: list[tuple[int, bytes]] = []
        event_rows: list[tuple[str, str, str, float, int | None, str]] = []
        outcomes = []
        position = 0
        for job in jobs:
            new: list[Event] = []
            duplicates = 0
            for event in job.events or ():
                key = keys[position]
                position += 1
                self._used += 1
                if key in known:
                    touched.append((self._used, key))
                    duplicates += 1
                    continue
                known.add(key)
                self._unmerged.add(key, self._used)
                self.dedupe_entries += 1
                event.received_at = received_at
                dseq: int | None = None
                if event.media is None:
                    self.last_dseq += 1
                    dseq = self.last_dseq
                else:
                    self._media_waiting = True
                body = encode(event.to_dict())
                event_rows.append((event.id, event.source, event.kind, now, dseq, body))
                new.append(event)
            outcomes.append((new, duplicates))
        self._unmerged.touch(conn, touched)
        seqs = insert_rows(
            conn,
            "INSERT INTO events (id, source, kind, received_at, dseq, body) VALUES",
            6,
            event_rows,
        )
        for row, seq in zip(event_rows, seqs, strict=True):
            if row[4] is not None:
                self._fresh.append(ReadyEvent(row[4], seq, row[5]))
        if seqs:
            self._batch_last_seq = seqs[-1]
        return outcomes

    def _finish_batch(self, conn: sqlite3.Connection, *, merge_all: bool = False) -> None:
        """The dedupe index's share of a batch: the next slice of a merge, which evicts in
        its range (`UnmergedKeys.merge_step`). Entries may pass the capacity by the keys of
        one merge and those that arrive while it runs: at a million, ~1%."""
        unmerged = self._unmerged
        indexed = self.dedupe_entries - len(unmerged)
        excess = self.dedupe_entries - self.dedupe_capacity
        written, evicted, whole = unmerged.merge_step(
            conn, self._batch_last_seq, indexed, excess, everything=merge_all
        )
        self.dedupe_entries -= evicted
        excess = min(self.dedupe_entries - self.dedupe_capacity, indexed + written - evicted)
        if whole and excess > 0:
            dedupe.evict_oldest(conn, excess)
            self.dedupe_entries -= excess

    def _batch_done(self, committed: bool) -> None:
        if committed:
            self._unmerged.committed()
            self._last_seq = self._batch_last_seq
        else:
            self._unmerged.rolled_back()
            self._batch_last_seq = self._last_seq

    def _idle_work_waiting(self) -> bool:
        return self._unmerged.since is not None

    def _idle(self, conn: sqlite3.Connection, *, closing: bool = False) -> None:
        """Merge every unmerged key once the writer is idle and they have waited long
        enough, or when it stops (a clean restart reads none of them back)."""
        if not (closing or self._unmerged.idle_merge_due()):
            return
        for _ in range(2):  # a merge that was running, then the keys that came after it
            if not len(self._unmerged):
                return
            saved = self.dedupe_entries
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._finish_batch(conn, merge_all=True)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.rollback()
                self.dedupe_entries = saved
                self._batch_done(False)
                log.warning("journal_dedupe_merge_failed", error=str(exc))
                return
            self._batch_done(True)

    async def probe(self) -> bool:
        """Try a tiny write; true when the journal accepts writes again."""
        try:
            await self._submit(
                lambda conn: conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)", (str(time.time()),)
                )
            )
        except JournalError:
            return False
        return True

    # -- media -----------------------------------------------------------------

    async def pending_media(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        """Events that wait for their media, oldest first: (seq, event)."""
        rows = await self._read(
            "SELECT seq, body FROM events WHERE dseq IS NULL ORDER BY seq LIMIT ?", (limit,)
        )
        return [(seq, load_json(body)) for seq, body in rows]

    async def complete_media(self, seq: int, event: dict[str, Any]) -> None:
        """Store the event with its media result and hand it to the sinks."""

        def work(conn: sqlite3.Connection) -> None:
            body = encode(event)
            self.last_dseq += 1
            updated = conn.execute(
                "UPDATE events SET body = ?, dseq = ? WHERE seq = ? AND dseq IS NULL",
                (body, self.last_dseq, seq),
            ).rowcount
            if updated:
                self._fresh.append(ReadyEvent(self.last_dseq, seq, body))
            else:  # completed already (a second media worker): keep dseq gap-free
                self.last_dseq -= 1

        await self._submit(work)
        if event.get("kind") == "system" and event.get("event") == FORGET_EVENT:
            # `wahookd forget` (another process) erased events: none of them may still be
            # handed to a sink from memory. Reads after this come from the database.
            self._recent.clear()
            self.recent_bytes = 0

    # -- delivery ----------------------------------------------------------------

    async def read_ready(self, after: int, limit: int, max_bytes: int = READ_BYTES) -> list[ReadyEvent]:
        """Ready events after `after`, in delivery order (from memory when recent): at most
        `limit` of them and, past the first, at most `max_bytes` of bodies."""
        if after + 1 in self._recent:
            batch: list[ReadyEvent] = []
            dseq = after + 1
            total = 0
            while dseq in self._recent and len(batch) < limit and total < max_bytes:
                batch.append(self._recent[dseq])
                total += len(batch[-1].body)
                dseq += 1
            return batch
        if after >= self.last_dseq:
            # Nothing past it: this daemon hands out every position itself (`give_position`
            # only runs with it stopped). A caught-up sink asks after every group commit
            # (at low traffic, after every event): no reader thread for an empty answer.
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_ready_sync, after, limit, max_bytes)

    def _read_ready_sync(self, after: int, limit: int, max_bytes: int) -> list[ReadyEvent]:
        batch: list[ReadyEvent] = []
        total = 0
        cursor = self._reader().cursor()
        try:
            cursor.execute(
                "SELECT dseq, seq, body FROM events WHERE dseq > ? ORDER BY dseq LIMIT ?", (after, limit)
            )
            for row in cursor:
                batch.append(ReadyEvent(*row))
                total += len(row[2])
                if total >= max_bytes:
                    break
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc
        finally:
            cursor.close()  # ends the read transaction: no snapshot outlives the call
        return batch

    async def cursor(self, sink: str) -> int:
        """The sink's last delivered dseq. A new sink starts at the journal's end."""
        rows = await self._read("SELECT dseq FROM cursors WHERE sink = ?", (sink,))
        if rows:
            return int(rows[0][0])
        start = self.last_dseq
        await self.save_cursor(sink, start)
        return start

    async def save_cursor(self, sink: str, dseq: int) -> None:
        now = time.time()
        # One `deliveries` row per sink per second at most (a busy sink saves 5 times a
        # second): within a second the latest row moves forward, so `trace` says when an
        # event was delivered to within a second, and the table grows by time, not traffic.
        previous = self._delivery_rows.get(sink)
        self._delivery_rows[sink] = (
            (dseq, now) if previous is None or now - previous[1] >= 1.0 else (dseq, previous[1])
        )

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO cursors (sink, dseq) VALUES (?, ?) "
                "ON CONFLICT(sink) DO UPDATE SET dseq = excluded.dseq",
                (sink, dseq),
            )
            if previous is not None and now - previous[1] < 1.0:
                conn.execute(
                    "UPDATE deliveries SET dseq = ? WHERE sink = ? AND dseq = ?", (dseq, sink, previous[0])
                )
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO deliveries (sink, dseq, at) VALUES (?, ?, ?)", (sink, dseq, now)
                )

        await self._submit(work)

    async def record_retry(
        self, sink: str, event_id: str, attempts: int, next_try: float, error: str
    ) -> None:
        await self._submit(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO retries (sink, event_id, attempts, next_try, last_error) "
                "VALUES (?, ?, ?, ?, ?)",
                (sink, event_id, attempts, next_try, error),
            )
        )

    async def clear_retry(self, sink: str, event_id: str) -> None:
        await self._submit(
            lambda conn: conn.execute("DELETE FROM retries WHERE sink = ? AND event_id = ?", (sink, event_id))
        )

    async def paused_sinks(self) -> set[str]:
        return {row[0] for row in await self._read("SELECT sink FROM pauses", ())}

    async def dead_letter(
        self, sink: str, seq: int, event: dict[str, Any], attempts: int, error: str
    ) -> None:
        await self._submit(
            lambda conn: conn.execute(
                "INSERT INTO dead_letters (sink, seq, event_id, attempts, error, failed_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sink, seq, event["id"], attempts, error, time.time(), encode(event)),
            )
        )

    async def dead_letter_counts(self) -> dict[str, int]:
        rows = await self._read("SELECT sink, count(*) FROM dead_letters GROUP BY sink", ())
        return dict(rows)

    async def prune(self, sinks: Iterable[str], older_than: float, limit: int = 5000) -> int:
        """Delete delivered events older than `older_than` (epoch s) that every sink has passed."""
        names = list(sinks)
        if not names:
            return 0
        marks = ",".join("?" * len(names))

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(
                f"SELECT min(dseq), count(*) FROM cursors WHERE sink IN ({marks})",  # noqa: S608
                names,
            ).fetchone()
            if row[1] < len(names):  # a sink has not started yet: keep everything
                return 0, 0
            # An event's row holds its dedupe key until the key is merged into the index:
            # merge them now, and keep the events past the merge (keys that came meanwhile).
            unmerged = self._unmerged
            unmerged.merge_step(conn, self._batch_last_seq, 0, 0, everything=True)
            deleted = conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE dseq <= ? "
                "AND received_at < ? AND seq <= ? ORDER BY dseq LIMIT ?)",
                (row[0], older_than, unmerged.complete_seq(), limit),
            ).rowcount
            if deleted:
                # Every sink passed `row[0]`: that far, positions were handed out, and the
                # holes `forget` left below it need no explaining any more.
                raise_high_water(conn, row[0])
                conn.execute("DELETE FROM erased WHERE dseq <= ?", (row[0],))
            # Delivery times of events that are gone, except each sink's latest.
            conn.execute(
                "DELETE FROM deliveries WHERE at < ? AND dseq < (SELECT max(d.dseq) FROM deliveries d "
                "WHERE d.sink = deliveries.sink)",
                (older_than,),
            )
            return deleted, row[0]

        deleted, passed = await self._submit(work)
        if deleted:
            for dseq in [dseq for dseq in self._recent if dseq <= passed]:
                self._forget(dseq)
        return int(deleted)

    # -- reads -----------------------------------------------------------------

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, sql, params)

    def _read_sync(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc

    def _reader(self) -> sqlite3.Connection:
        """This reader thread's connection (autocommit: each read is its own snapshot)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # Readers mostly read the newest events, which the OS caches anyway.
                conn = connect(self.path, durable=self.durable, cache_kib=1024)
            except sqlite3.Error as exc:
                raise JournalError(f"journal read failed: {exc}") from exc
            self._local.conn = conn
        return conn
