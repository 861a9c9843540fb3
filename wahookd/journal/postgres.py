"""The journal in PostgreSQL (``state.backend = "postgres"``): several nodes, one database.

`PgJournal` is `Journal` behind the same interface, for the daemon. Its writer thread has a
connection of its own and group-commits like the SQLite writer: one transaction per batch
holds the batch's new events and their dedupe keys, committed before any request in it gets
its 200. Across nodes:

- **dedupe**: the key is the primary key; ``INSERT ... ON CONFLICT DO NOTHING RETURNING``
  inside the batch's transaction says which keys are new. A key another node's open
  transaction is inserting makes this one wait for that commit and then see a duplicate
  (or, past `LOCK_TIMEOUT` or in a deadlock, fail the batch: 503, the provider retries).
- **delivery order**: positions come from ``journal_state.last_dseq``, moved under that
  row's lock, which the batch keeps until it commits; so positions become visible in order,
  and a sink reading ``dseq > cursor`` never skips one that commits late.
- **leases** (`Leases`): each sink and the media stage run on one node at a time; a watcher
  thread tells this node's workers of events other nodes committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import structlog

from wahookd.errors import JournalError
from wahookd.events import Event, load_json
from wahookd.journal import dedupe
from wahookd.journal.pgschema import connect, describe, migrate
from wahookd.journal.records import ReadyEvent
from wahookd.journal.schema import FORGET_EVENT, encode, format_time_from
from wahookd.journal.writer import READ_BYTES, JournalWriter, _Job

log = structlog.get_logger("wahookd.journal")

WATCH_SECONDS = 0.1  # how often a node looks for events other nodes committed
LEASE_MEDIA = "media"


def lease_name(sink: str) -> str:
    return f"sink:{sink}"


def node_id() -> str:
    """This process, as `status` names the node holding a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class PgJournal(JournalWriter):
    """The journal of a PostgreSQL database. Open it, `commit` events, read them back in order."""

    def __init__(
        self,
        url: str,
        *,
        durable: bool = True,
        dedupe_capacity: int = 1_000_000,
        observe_commit: Callable[[float], None] | None = None,
        lease_seconds: float = 15.0,
    ) -> None:
        super().__init__(observe_commit=observe_commit)
        self.url = url
        self.path = describe(url)  # type: ignore[assignment] # named in messages only
        self.durable = durable
        self.dedupe_capacity = dedupe_capacity
        self.last_dseq = 0
        self.dedupe_entries = 0
        self._used = 0
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="journal-read")
        self._local = threading.local()
        self._delivery_rows: dict[str, tuple[int, float]] = {}
        self._writer_pg: psycopg.Connection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self.holder = node_id()
        self.leases = Leases(url, self.holder, lease_seconds)

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        """Migrate the schema and start the writer and the watcher (blocking; before serving)."""
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        conn = connect(self.url, durable=self.durable)
        migrate(conn)
        row = conn.execute("SELECT last_dseq, dedupe_entries FROM journal_state WHERE id = 1").fetchone()
        self.last_dseq, self.dedupe_entries = int(row[0]), int(row[1])
        self._writer_pg = conn
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()
        self._watcher = threading.Thread(target=self._watch_loop, name="journal-watch", daemon=True)
        self._watcher.start()
        self.leases.start(self._loop)

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(JournalError):
                await self._submit(lambda conn: None)  # everything submitted before is written
        self._closed = True
        await asyncio.to_thread(self.close_blocking)

    def close_blocking(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._batches.put(None)
            self._writer.join()
            self._writer = None
        self._watching.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        self.leases.stop()  # hands the sinks to another node at once
        self._readers.shutdown(wait=True)

    def on_ready(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop = self._loop or asyncio.get_running_loop()
        super().on_ready(listener)

    # -- the writer thread -----------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            jobs = self._batches.get()
            if jobs is None:
                break
            self._run_batch(None, jobs)  # type: ignore[arg-type] # the connection is ours
        if self._writer_pg is not None:
            with contextlib.suppress(psycopg.Error):
                self._writer_pg.close()

    def _connection(self) -> psycopg.Connection[Any]:
        """The writer's connection, made again after the database went away."""
        conn = self._writer_pg
        if conn is None or conn.closed or conn.broken:
            self._writer_pg = conn = connect(self.url, durable=self.durable)
        return conn

    def _run_batch(self, _conn: Any, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        saved = (self.last_dseq, self.dedupe_entries)
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn = self._connection()
            with conn.transaction():
                intake = [job for job in jobs if job.events is not None]
                if intake:
                    outcomes = self._insert_events(conn, intake)  # type: ignore[arg-type]
                    results = [(job, outcome, None) for job, outcome in zip(intake, outcomes, strict=True)]
                results += [(job, job.work(conn), None) for job in jobs if job.work is not None]  # type: ignore[arg-type]
                self._evict(conn)  # type: ignore[arg-type]
        except Exception as exc:
            self.last_dseq, self.dedupe_entries = saved
            self._fresh.clear()
            self._media_waiting = False
            self.healthy = False
            log.error("journal_commit_failed", error=str(exc), jobs=len(jobs))
            error = JournalError(f"journal write failed: {exc}")
            self._owed_since = time.monotonic()
            self._resolve([(job, None, error) for job in jobs], [], False)
            return
        self.healthy = True
        self._owed_since = time.monotonic()
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - started)
        fresh, self._fresh = self._fresh, []
        media, self._media_waiting = self._media_waiting, False
        self._resolve(results, fresh, media)

    def _take_positions(self, conn: psycopg.Connection[Any], positions: int, keys: int) -> int:
        """Hand out `positions` delivery positions and count `keys` new dedupe keys, under the
        ``journal_state`` row's lock (held to the commit); returns the last position."""
        row = conn.execute(
            "UPDATE journal_state SET last_dseq = last_dseq + %s, dedupe_entries = dedupe_entries + %s "
            "WHERE id = 1 RETURNING last_dseq, dedupe_entries",
            (positions, keys),
        ).fetchone()
        assert row is not None
        self.dedupe_entries = int(row[1])
        return int(row[0])

    def _insert_events(
        self, conn: psycopg.Connection[Any], jobs: list[_Job]
    ) -> list[tuple[list[Event], int]]:  # type: ignore[override]
        now = time.time()
        received_at = format_time_from(now)
        keys = [dedupe.dedupe_key(event.source, event.id) for job in jobs for event in job.events or ()]
        # Sorted, so that two nodes inserting overlapping keys lock them in one order.
        unique = sorted(set(keys))
        new_keys = {
            bytes(row[0])
            for row in conn.execute(
                "INSERT INTO dedupe (key, used) SELECT k, nextval('dedupe_used') "
                "FROM unnest(%s::bytea[]) AS k ORDER BY k ON CONFLICT DO NOTHING RETURNING key",
                (unique,),
            )
        }
        old_keys = [key for key in unique if key not in new_keys]
        if old_keys:  # a duplicate keeps its key young
            conn.execute(
                "UPDATE dedupe SET used = nextval('dedupe_used') WHERE key = ANY(%s::bytea[])", (old_keys,)
            )
        outcomes = []
        chosen: list[tuple[Event, bool]] = []  # new events, and whether each is ready
        position = 0
        for job in jobs:
            new: list[Event] = []
            duplicates = 0
            for event in job.events or ():
                key = keys[position]
                position += 1
                if key not in new_keys:
                    duplicates += 1
                    continue
                new_keys.discard(key)  # a second copy in this batch is a duplicate
                event.received_at = received_at
                chosen.append((event, event.media is None))
                if event.media is not None:
                    self._media_waiting = True
                new.append(event)
            outcomes.append((new, duplicates))
        if not chosen:
            return outcomes
        ready = sum(1 for _event, is_ready in chosen if is_ready)
        last = self._take_positions(conn, ready, len(chosen))
        dseq = last - ready
        rows: list[tuple[str, str, str, float, int | None, str]] = []
        for event, is_ready in chosen:
            position_of: int | None = None
            if is_ready:
                dseq += 1
                position_of = dseq
            rows.append((event.id, event.source, event.kind, now, position_of, encode(event.to_dict())))
        bodies = {row[4]: row[5] for row in rows if row[4] is not None}
        returned = conn.execute(
            "INSERT INTO events (id, source, kind, received_at, dseq, body) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], "
            "%s::bigint[], %s::text[]) "
            "RETURNING seq, dseq",
            [list(column) for column in zip(*rows, strict=True)],
        ).fetchall()
        for seq, position_of in sorted(returned, key=lambda row: row[1] or 0):
            if position_of is not None:
                self._fresh.append(ReadyEvent(int(position_of), int(seq), bodies[position_of]))
        self.last_dseq = max(self.last_dseq, last)
        return outcomes

    def _evict(self, conn: psycopg.Connection[Any]) -> None:
        excess = self.dedupe_entries - self.dedupe_capacity
        if excess > 0:
            deleted = conn.execute(
                "DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe ORDER BY used LIMIT %s)", (excess,)
            ).rowcount
            self._take_positions(conn, 0, -deleted)

    # -- other nodes' events ---------------------------------------------------

    def _watch_loop(self) -> None:
        """Tell this node's workers about positions and media events other nodes committed."""
        conn: psycopg.Connection[Any] | None = None
        seen_seq = -1
        while not self._watching.wait(WATCH_SECONDS):
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self.url)
                row = conn.execute(
                    "SELECT last_dseq, dedupe_entries, (SELECT coalesce(max(seq), 0) FROM events) "
                    "FROM journal_state WHERE id = 1"
                ).fetchone()
            except (psycopg.Error, JournalError) as exc:
                log.warning("journal_watch_failed", error=str(exc))
                conn = None
                continue
            if row is None:
                continue
            last, entries, seq = int(row[0]), int(row[1]), int(row[2])
            self.dedupe_entries = entries
            if last > self.last_dseq:
                self.last_dseq = last
                self._call(self._ready_listeners)
            if seq != seen_seq:
                if seen_seq >= 0:
                    self._call(self._media_listeners)
                seen_seq = seq
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _call(self, listeners: list[Callable[[], None]]) -> None:
        loop = self._loop
        if loop is None:
            return

        def call() -> None:
            for listener in listeners:
                listener()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(call)

    # -- intake ----------------------------------------------------------------

    async def probe(self) -> bool:
        try:
            await self._submit(lambda conn: conn.execute("SELECT 1"))
        except JournalError:
            return False
        return True

    # -- media -----------------------------------------------------------------

    async def pending_media(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        rows = await self._read(
            "SELECT seq, body FROM events WHERE dseq IS NULL ORDER BY seq LIMIT %s", (limit,)
        )
        return [(int(seq), load_json(body)) for seq, body in rows]

    async def complete_media(self, seq: int, event: dict[str, Any]) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            body = encode(event)
            waiting = conn.execute(
                "SELECT 1 FROM events WHERE seq = %s AND dseq IS NULL FOR UPDATE", (seq,)
            ).fetchone()
            if waiting is None:  # completed already (another node, before a lease moved)
                return
            dseq = self._take_positions(conn, 1, 0)
            conn.execute("UPDATE events SET body = %s, dseq = %s WHERE seq = %s", (body, dseq, seq))
            self.last_dseq = max(self.last_dseq, dseq)
            self._fresh.append(ReadyEvent(dseq, seq, body))

        await self._submit(work)
        if event.get("kind") == "system" and event.get("event") == FORGET_EVENT:
            self._recent.clear()
            self.recent_bytes = 0

    # -- delivery ----------------------------------------------------------------

    async def read_ready(self, after: int, limit: int, max_bytes: int = READ_BYTES) -> list[ReadyEvent]:
        if after + 1 in self._recent:
            batch: list[ReadyEvent] = []
            dseq = after + 1
            total = 0
            while dseq in self._recent and len(batch) < limit and total < max_bytes:
                batch.append(self._recent[dseq])
                total += len(batch[-1].body)
                dseq += 1
            return batch
        rows = await self._read(
            "SELECT dseq, seq, body FROM events WHERE dseq > %s ORDER BY dseq LIMIT %s", (after, limit)
        )
        batch = []
        total = 0
        for dseq, seq, body in rows:
            batch.append(ReadyEvent(int(dseq), int(seq), body))
            total += len(body)
            if total >= max_bytes:
                break
        return batch

    async def cursor(self, sink: str) -> int:
        """The sink's last delivered dseq. A new sink starts at the journal's end."""
        rows = await self._read("SELECT dseq FROM cursors WHERE sink = %s", (sink,))
        if rows:
            return int(rows[0][0])

        def work(conn: psycopg.Connection[Any]) -> int:
            conn.execute(
                "INSERT INTO cursors (sink, dseq) SELECT %s, last_dseq FROM journal_state WHERE id = 1 "
                "ON CONFLICT DO NOTHING",
                (sink,),
            )
            row = conn.execute("SELECT dseq FROM cursors WHERE sink = %s", (sink,)).fetchone()
            return int(row[0]) if row else 0

        return int(await self._submit(work))

    async def save_cursor(self, sink: str, dseq: int) -> None:
        now = time.time()
        previous = self._delivery_rows.get(sink)
        self._delivery_rows[sink] = (
            (dseq, now) if previous is None or now - previous[1] >= 1.0 else (dseq, previous[1])
        )
        holder = self.holder

        def work(conn: psycopg.Connection[Any]) -> None:
            # Only the lease holder moves a sink's position: a node that lost its lease (a
            # pause of the process, a partition) must not move it back or past the new one.
            moved = conn.execute(
                "UPDATE cursors SET dseq = %s WHERE sink = %s AND EXISTS (SELECT 1 FROM leases "
                "WHERE name = %s AND holder = %s AND expires_at > now())",
                (dseq, sink, lease_name(sink), holder),
            ).rowcount
            if not moved:
                return
            if previous is not None and now - previous[1] < 1.0:
                conn.execute(
                    "UPDATE deliveries SET dseq = %s WHERE sink = %s AND dseq = %s", (dseq, sink, previous[0])
                )
            else:
                conn.execute(
                    "INSERT INTO deliveries (sink, dseq, at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (sink, dseq) DO UPDATE SET at = excluded.at",
                    (sink, dseq, now),
                )

        await self._submit(work)

    async def record_retry(
        self, sink: str, event_id: str, attempts: int, next_try: float, error: str
    ) -> None:
        await self._submit(
            lambda conn: conn.execute(
                "INSERT INTO retries (sink, event_id, attempts, next_try, last_error) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (sink, event_id) DO UPDATE SET attempts = excluded.attempts, "
                "next_try = excluded.next_try, last_error = excluded.last_error",
                (sink, event_id, attempts, next_try, error),
            )
        )

    async def clear_retry(self, sink: str, event_id: str) -> None:
        await self._submit(
            lambda conn: conn.execute(
                "DELETE FROM retries WHERE sink = %s AND event_id = %s", (sink, event_id)
            )
        )

    async def paused_sinks(self) -> set[str]:
        return {row[0] for row in await self._read("SELECT sink FROM pauses", ())}

    async def dead_letter(
        self, sink: str, seq: int, event: dict[str, Any], attempts: int, error: str
    ) -> None:
        await self._submit(
            lambda conn: conn.execute(
                "INSERT INTO dead_letters (sink, seq, event_id, attempts, error, failed_at, body) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (sink, seq, event["id"], attempts, error, time.time(), encode(event)),
            )
        )

    async def dead_letter_counts(self) -> dict[str, int]:
        rows = await self._read("SELECT sink, count(*) FROM dead_letters GROUP BY sink", ())
        return {str(sink): int(count) for sink, count in rows}

    async def prune(self, sinks: Iterable[str], older_than: float, limit: int = 5000) -> int:
        names = list(sinks)
        if not names:
            return 0

        def work(conn: psycopg.Connection[Any]) -> tuple[int, int]:
            row = conn.execute(
                "SELECT min(dseq), count(*) FROM cursors WHERE sink = ANY(%s)", (names,)
            ).fetchone()
            if row is None or row[1] < len(names):
                return 0, 0
            deleted = conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE dseq <= %s "
                "AND received_at < %s ORDER BY dseq LIMIT %s)",
                (row[0], older_than, limit),
            ).rowcount
            if deleted:
                conn.execute("DELETE FROM erased WHERE dseq <= %s", (row[0],))
            conn.execute(
                "DELETE FROM deliveries WHERE at < %s AND dseq < (SELECT max(d.dseq) FROM deliveries d "
                "WHERE d.sink = deliveries.sink)",
                (older_than,),
            )
            return deleted, int(row[0])

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
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None or conn.closed or conn.broken:
                conn = self._local.conn = connect(self.url)
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type] # fixed texts
        except psycopg.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc


class Leases:
    """Which node delivers each sink and runs the media stage: a row per lease in ``leases``,
    renewed every third of `lease_seconds` by a thread with a connection of its own. A lease
    whose holder stopped renewing expires, and the next node to try takes it; the database's
    clock decides, so the nodes' clocks need not agree."""

    def __init__(self, url: str, holder: str, lease_seconds: float) -> None:
        self.url = url
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.wanted: list[str] = []
        self.held: set[str] = set()
        self._renewed: dict[str, float] = {}  # lease -> when this node last renewed it (monotonic)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: dict[str, asyncio.Event] = {}
        self.listeners: list[Callable[[str, bool], None]] = []
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()

    def want(self, name: str) -> None:
        if name not in self.wanted:
            self.wanted.append(name)
            self._wake.put(None)

    def holds(self, name: str) -> bool:
        return name in self.held

    async def wait_held(self, name: str) -> None:
        self.want(name)
        while not self.holds(name):
            await self._event(name).wait()
            self._event(name).clear()

    async def wait_lost(self, name: str) -> None:
        while self.holds(name):
            await self._event(name).wait()
            self._event(name).clear()

    def _event(self, name: str) -> asyncio.Event:
        if name not in self._changed:
            self._changed[name] = asyncio.Event()
        return self._changed[name]

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="journal-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        interval = self.lease_seconds / 3
        while not self._stopping.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self.url)
                for name in list(self.wanted):
                    row = conn.execute(
                        "INSERT INTO leases (name, holder, expires_at) "
                        "VALUES (%s, %s, now() + make_interval(secs => %s)) "
                        "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                        "expires_at = excluded.expires_at "
                        "WHERE leases.holder = excluded.holder OR leases.expires_at < now() RETURNING holder",
                        (name, self.holder, self.lease_seconds),
                    ).fetchone()
                    if row is not None:
                        self._renewed[name] = time.monotonic()
                        self._set(name, True)
                    else:
                        self._set(name, False)
            except (psycopg.Error, JournalError) as exc:
                log.warning("lease_renew_failed", error=str(exc))
                conn = None
            # Unrenewed this long: another node may have it by now, so stop before it expires.
            for name in list(self.held):
                if time.monotonic() - self._renewed.get(name, 0.0) > self.lease_seconds * 0.8:
                    self._set(name, False)
            with contextlib.suppress(queue.Empty):
                self._wake.get(timeout=interval)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.execute("DELETE FROM leases WHERE holder = %s", (self.holder,))
            with contextlib.suppress(psycopg.Error):
                conn.close()
        for name in list(self.held):
            self._set(name, False)

    def _set(self, name: str, held: bool) -> None:
        if held == (name in self.held):
            return
        if held:
            self.held.add(name)
        else:
            self.held.discard(name)
        log.info("lease_taken" if held else "lease_lost", lease=name, holder=self.holder)
        loop = self._loop

        def tell() -> None:
            self._event(name).set()
            for listener in self.listeners:
                listener(name, held)

        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(tell)
