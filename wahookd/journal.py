"""The durable store: events, the dedupe LRU, sink positions and dead letters, in one SQLite file.

Every write goes through one writer thread that drains all waiting jobs into a single
transaction (group commit): with ``durability = "fsync"`` concurrent requests share one
fsync instead of queueing for one each, which is what keeps throughput near the bare
HTTP handler's. A job's future resolves only after its transaction has committed, so a
``200`` is never sent for an event that a power cut could take back.

Tables (other processes, e.g. ``wahookd status``, may read them while the daemon runs):

- ``events``: one row per accepted event. ``dseq`` (delivery order) is NULL while the event
  waits for its media and is assigned when it becomes ready for the sinks.
- ``dedupe``: 16-byte BLAKE2b keys of (source, event id) with an LRU counter, indexed both
  ways; the oldest entries are evicted past ``dedupe.capacity``. SQLite's B-tree keeps a
  lookup at a handful of page reads at a million keys, and the index lives on disk, so
  memory does not grow with the capacity.
- ``cursors``: each sink's last delivered ``dseq``. ``dead_letters``: events a sink gave up on.

The WAL stays bounded: a thread of its own copies it into the database (passive
checkpoints, off the request path), but under back-to-back commits such a checkpoint never
reaches the WAL's end, so the WAL would never start over and grow for ever. The writer
therefore restarts it itself, between two batches, once it passes `WAL_SIZE_LIMIT`; and gives
its disk space back after a second of idleness.

Memory stays bounded by bytes, not by event count: the recent-events cache has a byte budget
and leaves out large events, and one `read_ready` returns at most `READ_BYTES` of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from wahookd.errors import JournalError
from wahookd.events import Event, dump_json, format_time, load_json

log = structlog.get_logger("wahookd.journal")

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
MAX_JOBS_PER_COMMIT = 512
MAX_ROWS_PER_STATEMENT = 256
# Ready events kept in memory for sinks that are caught up, within a byte budget: 300
# events of 1.4 MB once took the RSS from 46 to 881 MB when the cache counted events.
# Larger events are not kept at all (read back from SQLite): one of them would push out
# hundreds of ordinary 2-3 KB events for a saving that their own size dwarfs.
RECENT_BYTES = 4 * 1024 * 1024
RECENT_EVENT_BYTES = 64 * 1024
READ_BYTES = 8 * 1024 * 1024  # most event bytes one `read_ready` returns (at least one event)
CHECKPOINT_SECONDS = 0.25
# The WAL restarts once it passes this, and its file is cut back to it (journal_size_limit):
# SQLite's own default (1000 pages of 4 KiB before a checkpoint) keeps a WAL near 4 MB too.
# The file holds at most this plus one batch; a batch of ordinary events is well under 1 MB.
WAL_SIZE_LIMIT = 4 * 1024 * 1024
WAL_IDLE_SECONDS = 1.0  # a writer idle this long truncates the WAL to nothing
# How long the writer's own checkpoint waits for readers to leave the WAL. A reader holding a
# snapshot longer makes it give up and try again a second later, rather than stall commits.
WAL_CHECKPOINT_BUSY_MS = 100
WAL_RETRY_SECONDS = 1.0
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


def dedupe_key(source: str, event_id: str) -> bytes:
    return hashlib.blake2b(f"{source}\x00{event_id}".encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class ReadyEvent:
    """An event ready for the sinks, in delivery order."""

    dseq: int
    seq: int
    body: str


@dataclass(slots=True)
class _Job:
    """A write for the writer thread: `work(conn)`, or new `events` to commit, which the
    writer inserts together with the other events of its batch."""

    work: Callable[[sqlite3.Connection], Any] | None
    future: asyncio.Future[Any]
    events: list[Event] | None = None


@functools.lru_cache(maxsize=64)
def _placeholders(count: int) -> str:
    """`(?, ?, ...)` with `count` marks."""
    return "(" + ", ".join("?" * count) + ")"


@functools.lru_cache(maxsize=64)
def _rows_sql(statement: str, width: int, rows: int) -> str:
    """`statement` followed by `rows` groups of `width` placeholders."""
    return statement + " " + ", ".join([_placeholders(width)] * rows)


def _chunks(count: int, most: int) -> list[tuple[int, int]]:
    """(start, size) pieces of `count` rows, each a power of two up to `most`, so that a
    handful of statement texts (all in sqlite3's statement cache) cover any count."""
    pieces = []
    start = 0
    while start < count:
        size = min(most, 1 << ((count - start).bit_length() - 1))
        pieces.append((start, size))
        start += size
    return pieces


def _rows_per_statement(conn: sqlite3.Connection, width: int) -> int:
    """The most rows of `width` values one statement may bind: a power of two, within
    SQLite's parameter limit (999 before SQLite 3.32, 32766 since)."""
    fits = min(MAX_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    return 1 << (fits.bit_length() - 1)


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


class Journal:
    """The journal of one state directory. Open it, `commit` events, read them back in order."""

    def __init__(
        self,
        state_dir: Path,
        *,
        durable: bool = True,
        dedupe_capacity: int = 1_000_000,
        observe_commit: Callable[[float], None] | None = None,
    ) -> None:
        self.path = Path(state_dir) / JOURNAL_FILE
        self.durable = durable
        self.dedupe_capacity = dedupe_capacity
        self.observe_commit = observe_commit
        self.healthy = True
        self.last_dseq = 0
        self.dedupe_entries = 0
        # Jobs wait on the loop in `_pending` while the writer commits the previous batch,
        # then go over as one list: one thread wake-up per batch, not one per request.
        self._pending: list[_Job] = []
        self._handing_off = False  # a hand-off is scheduled or the writer holds a batch
        self._batches: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="journal-read")
        self._local = threading.local()
        self._ready_listeners: list[Callable[[], None]] = []
        self._media_listeners: list[Callable[[], None]] = []
        self._used = 0
        # Events made ready by the batch being written (writer thread), then handed to
        # `_recent` (loop thread) so caught-up sinks read them without a database round trip.
        self._fresh: list[ReadyEvent] = []
        self._media_waiting = False  # the batch being written holds events that wait for media
        self._recent: dict[int, ReadyEvent] = {}
        self.recent_bytes = 0  # what `_recent` holds, as sys.getsizeof counts it
        # Since when the writer owes work without having finished a batch (None: nothing to
        # do). Written by the loop and the writer, read by `writer_stalled` from anywhere: a
        # float swapped in one assignment, which the GIL makes atomic.
        self._owed_since: float | None = None
        self._restart_wal = False  # the checkpoint thread saw the WAL pass half its limit
        self._wal_written = False  # the WAL has content that an idle truncation would drop
        self._wal_retry_at = 0.0  # after a checkpoint that found a reader in the way
        # SQLite runs one checkpoint at a time and does not wait for another (SQLITE_BUSY at
        # once, busy handler or not): the writer's checkpoint waits here for the thread's.
        self._checkpointing = threading.Lock()
        self._delivery_rows: dict[str, tuple[int, float]] = {}  # sink -> its latest (dseq, at)

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        """Create or check the schema and start the writer thread (blocking; before serving)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, durable=self.durable, cache_kib=4096)
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
        self._used = conn.execute("SELECT coalesce(max(used), 0) FROM dedupe").fetchone()[0]
        self.dedupe_entries = conn.execute("SELECT count(*) FROM dedupe").fetchone()[0]
        # Checkpoints copy the WAL into the database file. Left to SQLite they run inside
        # whichever commit crosses 1000 pages, and every request in that batch waits for
        # them; a thread of their own keeps them off the request path.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._writer_conn = conn
        self._wal_path = self.path.with_name(self.path.name + "-wal")
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="journal-checkpoint", daemon=True
        )
        self._checkpointer.start()

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
        self._closed = True  # later writes fail at once rather than wait forever
        if self._writer is not None:
            self._batches.put(None)
            self._writer.join()
            self._writer = None
            self._closing.set()
            self._checkpointer.join()
        self._readers.shutdown(wait=True)

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database off the request path. A passive checkpoint cannot
        let the WAL start over while commits follow each other (it never reaches the end),
        so once the WAL passes half its limit, ask the writer to restart it: right after this
        copy, the writer's own checkpoint has only the last few commits left to copy."""
        conn = connect(self.path, durable=self.durable)
        frame_bytes = PAGE_BYTES + 24  # each WAL frame: a 24-byte header and one page
        while not self._closing.wait(CHECKPOINT_SECONDS):
            try:
                with self._checkpointing:
                    _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("journal_checkpoint_failed", error=str(exc))
                continue
            if frames * frame_bytes >= WAL_SIZE_LIMIT // 2:
                self._restart_wal = True
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def on_ready(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) whenever events become ready for delivery."""
        self._ready_listeners.append(listener)

    def on_media(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) whenever events that wait for media are committed."""
        self._media_listeners.append(listener)

    # -- the writer thread -----------------------------------------------------

    def _submit(
        self, work: Callable[[sqlite3.Connection], Any] | None, events: list[Event] | None = None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self._writer is None or self._closed:
            raise JournalError("journal is closed")
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Job(work, future, events))
        if self._owed_since is None:
            self._owed_since = time.monotonic()
        if not self._handing_off:
            self._handing_off = True
            loop.call_soon(self._hand_off)  # after this loop iteration's other requests
        return future

    def _hand_off(self) -> None:
        """Give the writer every waiting job (on the loop; the writer is idle)."""
        jobs = self._pending[:MAX_JOBS_PER_COMMIT]
        del self._pending[:MAX_JOBS_PER_COMMIT]
        if jobs:
            self._batches.put(jobs)
        else:
            self._handing_off = False
            self._owed_since = None

    def _write_loop(self) -> None:
        conn = self._writer_conn
        while True:
            try:
                jobs = self._batches.get(timeout=WAL_IDLE_SECONDS if self._wal_written else None)
            except queue.Empty:  # idle: give the WAL's disk space back
                if self._checkpoint(conn, "TRUNCATE"):
                    self._wal_written = False
                continue
            if jobs is None:
                break
            self._run_batch(conn, jobs)
            self._wal_written = True
            if self._restart_wal or self._wal_bytes() > WAL_SIZE_LIMIT:
                # Between two batches nothing else writes, so this checkpoint reaches the
                # WAL's end and the next commit starts it over (cut back to the limit).
                self._checkpoint(conn, "RESTART")
        conn.close()

    def _wal_bytes(self) -> int:
        try:
            return self._wal_path.stat().st_size
        except OSError:
            return 0

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> bool:
        """A blocking checkpoint on the writer's connection; true when it reached the end."""
        now = time.monotonic()
        if now < self._wal_retry_at:
            return False
        try:
            conn.execute(f"PRAGMA busy_timeout={WAL_CHECKPOINT_BUSY_MS}")
            with self._checkpointing:
                busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            log.warning("journal_checkpoint_failed", mode=mode, error=str(exc))
            busy, frames, copied = 1, 0, 0
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if busy:
            # -1: another process's checkpoint held the lock; try again after the next batch.
            # Else a reader kept an old snapshot past the wait: give it a second.
            if frames >= 0:
                log.warning("journal_checkpoint_busy", mode=mode, frames=frames, copied=copied)
                self._wal_retry_at = now + WAL_RETRY_SECONDS
            return False
        self._restart_wal = False
        return True

    def writer_stalled(self, max_seconds: float) -> bool:
        """True when work has waited for the writer, or been in its hands, for more than
        `max_seconds` without it finishing a batch (e.g. a lock or the disk holds it).
        An idle writer is never stalled. Cheap and safe from any thread: for a watchdog."""
        since = self._owed_since
        return since is not None and time.monotonic() - since > max_seconds

    def _run_batch(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        saved = (self.last_dseq, self._used, self.dedupe_entries)
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            # No savepoint per job: a job fails only when the database does, and then the
            # whole batch fails together (503 for each request in it).
            intake = [job for job in jobs if job.events is not None]
            if intake:
                outcomes = self._insert_events(conn, intake)
                results = [(job, outcome, None) for job, outcome in zip(intake, outcomes, strict=True)]
            results += [(job, job.work(conn), None) for job in jobs if job.work is not None]
            self._evict(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            # A rollback that fails too must not kill the writer: every later commit
            # would wait forever. The next BEGIN reports what is wrong.
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.rollback()
            self.last_dseq, self._used, self.dedupe_entries = saved
            self._fresh.clear()
            self._media_waiting = False
            self.healthy = False
            log.error("journal_commit_failed", error=str(exc), jobs=len(jobs))
            error = JournalError(f"journal write failed: {exc}")
            self._owed_since = time.monotonic()  # done with this batch; what follows is owed from now
            self._resolve([(job, None, error) for job in jobs], [], False)
            return
        self.healthy = True
        self._owed_since = time.monotonic()  # done with this batch; what follows is owed from now
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - started)
        fresh, self._fresh = self._fresh, []
        media, self._media_waiting = self._media_waiting, False
        self._resolve(results, fresh, media)

    def _resolve(
        self,
        results: list[tuple[_Job, Any, BaseException | None]],
        fresh: list[ReadyEvent],
        media: bool,
    ) -> None:
        loop = results[0][0].future.get_loop()

        def finish() -> None:
            self._remember(fresh)
            for job, value, error in results:
                if job.future.done():  # the request went away meanwhile
                    continue
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(value)
            self._hand_off()  # what arrived during this commit is the next batch
            if fresh:
                for listener in self._ready_listeners:
                    listener()
            if media:
                for listener in self._media_listeners:
                    listener()

        # One wake-up of the loop for the whole batch, not one per request. A closed loop
        # means nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(finish)

    def _remember(self, fresh: list[ReadyEvent]) -> None:
        """Keep newly ready events for caught-up sinks, within `RECENT_BYTES` (on the loop)."""
        recent = self._recent
        for ready_event in fresh:
            size = sys.getsizeof(ready_event.body)
            if size <= RECENT_EVENT_BYTES:
                recent[ready_event.dseq] = ready_event
                self.recent_bytes += size
        while self.recent_bytes > RECENT_BYTES:
            self._forget(next(iter(recent)))

    def _forget(self, dseq: int) -> None:
        self.recent_bytes -= sys.getsizeof(self._recent.pop(dseq).body)

    def _evict(self, conn: sqlite3.Connection) -> None:
        excess = self.dedupe_entries - self.dedupe_capacity
        if excess > 0:
            conn.execute(
                "DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe ORDER BY used LIMIT ?)",
                (excess,),
            )
            self.dedupe_entries -= excess

    # -- intake ----------------------------------------------------------------

    async def commit(self, events: list[Event]) -> tuple[list[Event], int]:
        """Make the new events durable; returns them and the number of duplicates.

        Raises `JournalError` when the write fails (the caller answers 503).
        """
        return await self.submit(events)

    def submit(self, events: list[Event]) -> asyncio.Future[tuple[list[Event], int]]:
        """`commit` as a future, for the intake, which answers from a callback."""
        if not events:
            done: asyncio.Future[tuple[list[Event], int]] = asyncio.get_running_loop().create_future()
            done.set_result(([], 0))
            return done
        return self._submit(None, events)

    def _insert_events(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[list[Event], int]]:
        """Commit the events of every intake job in the batch: (new events, duplicates) each.

        A few multi-row statements for the whole batch rather than two per event: every
        statement releases and retakes the GIL, which the event loop holds most of the time,
        and each of those hand-overs was a pair of context switches.
        """
        now = time.time()
        received_at = format_time_from(now)
        keys = [dedupe_key(event.source, event.id) for job in jobs for event in job.events or ()]
        known = self._known_keys(conn, keys)
        dedupe_rows: list[tuple[bytes, int]] = []
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
                dedupe_rows.append((key, self._used))
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
        self._insert_rows(conn, "INSERT INTO dedupe (key, used) VALUES", 2, dedupe_rows)
        self.dedupe_entries += len(dedupe_rows)
        if touched:
            conn.executemany("UPDATE dedupe SET used = ? WHERE key = ?", touched)
        seqs = self._insert_rows(
            conn,
            "INSERT INTO events (id, source, kind, received_at, dseq, body) VALUES",
            6,
            event_rows,
        )
        for row, seq in zip(event_rows, seqs, strict=True):
            if row[4] is not None:
                self._fresh.append(ReadyEvent(row[4], seq, row[5]))
        return outcomes

    @staticmethod
    def _known_keys(conn: sqlite3.Connection, keys: list[bytes]) -> set[bytes]:
        """Which of `keys` the dedupe index holds."""
        unique = list(dict.fromkeys(keys))
        known: set[bytes] = set()
        for start, size in _chunks(len(unique), _rows_per_statement(conn, 1)):
            sql = "SELECT key FROM dedupe WHERE key IN " + _placeholders(size)  # noqa: S608 - marks only
            known.update(row[0] for row in conn.execute(sql, unique[start : start + size]))
        return known

    @staticmethod
    def _insert_rows(
        conn: sqlite3.Connection, statement: str, width: int, rows: list[tuple[Any, ...]]
    ) -> list[int]:
        """Insert `rows` in a few statements; returns their rowids (for a rowid table: the
        dedupe table has none, and its caller ignores them)."""
        rowids: list[int] = []
        for start, size in _chunks(len(rows), _rows_per_statement(conn, width)):
            values = [value for row in rows[start : start + size] for value in row]
            last = conn.execute(_rows_sql(statement, width, size), values).lastrowid or 0
            # One statement takes consecutive rowids: nothing else writes meanwhile.
            rowids.extend(range(last - size + 1, last + 1))
        return rowids

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
            deleted = conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE dseq <= ? "
                "AND received_at < ? ORDER BY dseq LIMIT ?)",
                (row[0], older_than, limit),
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
                conn = connect(self.path, durable=self.durable)
            except sqlite3.Error as exc:
                raise JournalError(f"journal read failed: {exc}") from exc
            self._local.conn = conn
        return conn


def encode(event: dict[str, Any]) -> str:
    return dump_json(event).decode()


def format_time_from(epoch: float) -> str:
    return format_time(datetime.fromtimestamp(epoch, tz=UTC))


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    dseq: int | None  # None while its media is being fetched
    received_at: float
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """What the journal knows about one event at one sink."""

    cursor: int | None  # the sink's position; None when it never ran
    delivered_at: float | None
    retry: tuple[int, float, str] | None  # attempts, next try (epoch), last error
    dead: tuple[int, str, float] | None  # attempts, error, when
    paused: bool


CONTACT_FIELDS = ("from", "to", "chat_id", "from_lid", "from_user_id")


class JournalReader:
    """The journal as the CLI reads it, safely beside a running daemon (`trace`): the one
    owner of these queries. Each method is one read; the connection is the caller's."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

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

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
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
        numbers events from memory), so every sink receives it. Dedupe keys stay."""
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
            for start in range(0, len(seqs), MAINTENANCE_CHUNK):
                part = seqs[start : start + MAINTENANCE_CHUNK]
                marks = ",".join("?" * len(part))
                # Read again under the lock: the media stage may have finished one since the
                # scan (a position and `media.stored` of its own).
                rows = conn.execute(
                    f"SELECT seq, dseq, id, body FROM events WHERE seq IN ({marks})",  # noqa: S608 - marks only
                    part,
                ).fetchall()
                for _seq, dseq, event_id, body in rows:
                    events.append(load_json(body))
                    event_ids.add(event_id)
                    if dseq is not None:
                        raise_high_water(conn, dseq)
                        if dseq > passed:
                            conn.execute("INSERT OR IGNORE INTO erased (dseq) VALUES (?)", (dseq,))
                conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", part)  # noqa: S608 - marks only
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
