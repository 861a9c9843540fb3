"""The journal's writer thread: group commit, and the WAL kept bounded.

Every write goes through one writer thread that drains all waiting jobs into a single
transaction (group commit): with ``durability = "fsync"`` concurrent requests share one
fsync instead of queueing for one each, which is what keeps throughput near the bare
HTTP handler's. A job is answered only after its transaction has committed, so a
``200`` is never sent for an event that a power cut could take back.

The WAL stays bounded: a thread of its own copies it into the database (passive
checkpoints, off the request path), but under back-to-back commits such a checkpoint never
reaches the WAL's end, so the WAL would never start over and grow for ever. The writer
therefore restarts it itself, between two batches, once it passes `WAL_SIZE_LIMIT`; and gives
its disk space back after a second of idleness.

`JournalWriter` is the machinery; `wahookd.journal.store.Journal` says what a batch writes
(`_insert_events`, `_finish_batch`, `_idle`) and what a read returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from wahookd.errors import JournalError
from wahookd.events import Event
from wahookd.journal.records import ReadyEvent
from wahookd.journal.schema import BUSY_TIMEOUT_MS, PAGE_BYTES, connect

log = structlog.get_logger("wahookd.journal")

MAX_JOBS_PER_COMMIT = 512
# Ready events kept in memory for sinks that are caught up, within a byte budget: 300
# events of 1.4 MB once took the RSS from 46 to 881 MB when the cache counted events.
# Larger events are not kept at all (read back from SQLite): one of them would push out
# hundreds of ordinary 2-3 KB events for a saving that their own size dwarfs. 2 MiB is ~700
# events: a sink that keeps up is a few batches behind; the unmerged dedupe keys have the
# other 2 MiB this cache once had.
RECENT_BYTES = 2 * 1024 * 1024
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


def name_os_thread(name: str) -> None:
    """Give the calling thread its name in the kernel too (Linux: `top -H`, `ps -L`,
    /proc/PID/task/TID/comm), so an operator, and bench/run.py, can tell the writer's CPU
    from the event loop's. Python 3.11 names its threads only for itself."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME


Done = Callable[[Any, BaseException | None], None]  # (result, None) or (None, error), on the loop


@dataclass(slots=True)
class _Job:
    """A write for the writer thread: `work(conn)`, or new `events` to commit, which the
    writer inserts together with the other events of its batch. `done` is called on the
    loop once the batch has committed or failed."""

    work: Callable[[sqlite3.Connection], Any] | None
    done: Done
    events: list[Event] | None = None


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class JournalWriter:
    """The writer thread and the loop-side hand-off of its batches (see the module doc)."""

    path: Path
    durable: bool
    last_dseq: int
    _used: int
    dedupe_entries: int

    def __init__(self, *, observe_commit: Callable[[float], None] | None = None) -> None:
        self.observe_commit = observe_commit
        self.healthy = True
        # Jobs wait on the loop in `_pending` while the writer commits the previous batch,
        # then go over as one list: one thread wake-up per batch, not one per request.
        self._pending: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop jobs come from
        self._handing_off = False  # a hand-off is scheduled or the writer holds a batch
        self._batches: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._ready_listeners: list[Callable[[], None]] = []
        self._media_listeners: list[Callable[[], None]] = []
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

    def start_writer(self, conn: sqlite3.Connection) -> None:
        """Hand `conn` to a new writer thread, and start the checkpoint thread."""
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

    def stop_writer(self) -> None:
        """Stop the threads after the batches handed to the writer (blocking)."""
        self._closed = True  # later writes fail at once rather than wait forever
        if self._writer is not None:
            self._batches.put(None)
            self._writer.join()
            self._writer = None
            self._closing.set()
            self._checkpointer.join()

    # Defined by the store: what a batch writes besides its jobs' own work.
    def _insert_events(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[list[Event], int]]:
        raise NotImplementedError

    def _finish_batch(self, conn: sqlite3.Connection) -> None:
        """Last in each batch's transaction."""

    def _batch_done(self, committed: bool) -> None:
        """After each batch: it committed, or was rolled back."""

    def _idle_work_waiting(self) -> bool:
        return False

    def _idle(self, conn: sqlite3.Connection, *, closing: bool = False) -> None:
        """When the writer has been idle for `WAL_IDLE_SECONDS`, and when it stops."""

    def on_ready(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) whenever events become ready for delivery."""
        self._ready_listeners.append(listener)

    def on_media(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the loop) whenever events that wait for media are committed."""
        self._media_listeners.append(listener)

    def _submit(
        self, work: Callable[[sqlite3.Connection], Any] | None, events: list[Event] | None = None
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Job(work, functools.partial(_settle, future), events))
        return future

    async def commit(self, events: list[Event]) -> tuple[list[Event], int]:
        """Make the new events durable; returns them and the number of duplicates.

        Raises `JournalError` when the write fails (the caller answers 503).
        """
        if not events:
            return [], 0
        return await self._submit(None, events)  # type: ignore[no-any-return]

    def submit_then(self, events: list[Event], done: Done) -> None:
        """Commit `events`, then call `done((new events, duplicates), None)`, or
        `done(None, JournalError)`, on the loop: the intake's path, without a future and the
        loop callback that resolving one schedules for every request."""
        if not events:
            asyncio.get_running_loop().call_soon(done, ([], 0), None)
            return
        self._enqueue(_Job(None, done, events))

    def _enqueue(self, job: _Job) -> None:
        if self._writer is None or self._closed:
            raise JournalError("journal is closed")
        self._loop = asyncio.get_running_loop()
        self._pending.append(job)
        if self._owed_since is None:
            self._owed_since = time.monotonic()
        if not self._handing_off:
            self._handing_off = True
            self._loop.call_soon(self._hand_off)  # after this loop iteration's other requests

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
        name_os_thread("journal-writer")
        conn = self._writer_conn
        while True:
            try:
                idle_work = self._wal_written or self._idle_work_waiting()
                jobs = self._batches.get(timeout=WAL_IDLE_SECONDS if idle_work else None)
            except queue.Empty:  # idle: the store's idle work, then give the WAL's space back
                self._idle(conn)
                if self._checkpoint(conn, "TRUNCATE"):
                    self._wal_written = False
                continue
            if jobs is None:
                self._idle(conn, closing=True)
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

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database off the request path. A passive checkpoint cannot
        let the WAL start over while commits follow each other (it never reaches the end),
        so once the WAL passes half its limit, ask the writer to restart it: right after this
        copy, the writer's own checkpoint has only the last few commits left to copy."""
        name_os_thread("journal-ckpt")
        # A checkpoint copies WAL frames to the file; it hardly uses a page cache of its own.
        conn = connect(self.path, durable=self.durable, cache_kib=256)
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
            self._finish_batch(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            # A rollback that fails too must not kill the writer: every later commit
            # would wait forever. The next BEGIN reports what is wrong.
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.rollback()
            self.last_dseq, self._used, self.dedupe_entries = saved
            self._batch_done(False)
            self._fresh.clear()
            self._media_waiting = False
            self.healthy = False
            log.error("journal_commit_failed", error=str(exc), jobs=len(jobs))
            error = JournalError(f"journal write failed: {exc}")
            self._owed_since = time.monotonic()  # done with this batch; what follows is owed from now
            self._resolve([(job, None, error) for job in jobs], [], False)
            return
        self._batch_done(True)
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
        loop = self._loop
        assert loop is not None  # set by the first job

        def finish() -> None:
            self._remember(fresh)
            for job, value, error in results:
                try:
                    job.done(value, error)
                except Exception:  # one caller's bug must not leave the others unanswered
                    log.exception("journal_callback_failed")
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
