"""The journal stays bounded on disk and in memory under load, and says when its writer is stuck."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import sys
import threading
import time
from pathlib import Path

from wahookd.events import Event
from wahookd.journal import (
    JOURNAL_FILE,
    PAGE_BYTES,
    RECENT_BYTES,
    RECENT_EVENT_BYTES,
    WAL_SIZE_LIMIT,
    Journal,
)

REQUESTS_AT_ONCE = 8
EVENTS_PER_REQUEST = 4
RAW_BYTES = 2000  # an ordinary event with its raw payload is 2-3 KB


def event(text: str = "x" * RAW_BYTES) -> Event:
    return Event(
        id=secrets.token_hex(8),  # random ids: the dedupe keys land all over the index, as in life
        source="shop",
        provider="wasender",
        kind="message",
        event="messages.upsert",
        raw={"text": text},
    )


async def opened(path: Path, **kwargs: object) -> Journal:
    journal = Journal(path, **kwargs)  # type: ignore[arg-type]
    journal.open()
    return journal


async def until(condition, timeout: float, step: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(step)
    return condition()


async def test_the_wal_stays_under_its_limit_under_sustained_load_and_shrinks_after(tmp_path: Path) -> None:
    """Commits back to back with readers alongside (a sink worker reading behind, a `status`
    in another connection) once grew the WAL by ~11 KB per event for ever: a passive
    checkpoint never reached its end, so it never started over."""
    journal = await opened(tmp_path)
    wal = tmp_path / f"{JOURNAL_FILE}-wal"
    stop = threading.Event()
    largest = 0

    async def sink_worker() -> None:  # reads what was committed and moves its cursor, as a sink does
        cursor = 0
        while not stop.is_set():
            batch = await journal.read_ready(cursor, 100)
            if batch:
                cursor = batch[-1].dseq
                await journal.save_cursor("sink", cursor)
            else:
                await asyncio.sleep(0.002)

    def status() -> None:  # another process's short reads, as `wahookd status` makes them
        conn = sqlite3.connect(tmp_path / JOURNAL_FILE)
        while not stop.is_set():
            conn.execute("SELECT count(*), max(dseq) FROM events").fetchone()
            time.sleep(0.005)
        conn.close()

    reader = threading.Thread(target=status)
    reader.start()
    worker = asyncio.get_running_loop().create_task(sink_worker())
    try:
        for _ in range(300):  # ~9,600 events: ~100 MB of WAL without the fix
            await asyncio.gather(
                *(
                    journal.commit([event() for _ in range(EVENTS_PER_REQUEST)])
                    for _ in range(REQUESTS_AT_ONCE)
                )
            )
            largest = max(largest, wal.stat().st_size)
    finally:
        stop.set()
        await worker
        reader.join()
    # One batch: these requests and a cursor update. Each event dirties its page of the
    # events table, of both dedupe indexes and of the waiting-events index, plus its body.
    events = REQUESTS_AT_ONCE * EVENTS_PER_REQUEST
    one_batch = (events * (4 + RAW_BYTES / PAGE_BYTES) + 8) * (PAGE_BYTES + 24)
    assert largest <= WAL_SIZE_LIMIT + one_batch, f"WAL reached {largest / 1e6:.1f} MB"
    # Once the load stops, the idle writer gives the space back.
    assert await until(lambda: wal.stat().st_size == 0, timeout=5), wal.stat().st_size
    assert journal.last_dseq == 300 * events
    await journal.close()


async def test_the_recent_cache_is_bounded_by_bytes_and_large_events_are_read_back(tmp_path: Path) -> None:
    """300 events of 1.4 MB once took the RSS from 46 to 881 MB: the cache kept 1,024 whole events."""
    journal = await opened(tmp_path)
    large = [event("L" * 1_400_000) for _ in range(12)]
    small = [event("s" * RAW_BYTES) for _ in range(3000)]  # ~7 MB: more than the budget
    order = [*small[:2500], *large[:6], *small[2500:], *large[6:]]
    for piece in small[:2500], large[:6], small[2500:], large[6:]:
        await journal.commit(piece)
    cached = [sys.getsizeof(r.body) for r in journal._recent.values()]
    assert sum(cached) <= RECENT_BYTES
    assert journal.recent_bytes == sum(cached)
    assert max(cached) <= RECENT_EVENT_BYTES
    assert sum(cached) > RECENT_BYTES - RECENT_EVENT_BYTES  # the budget is spent on ordinary events
    # Every event still comes back, in order, the large ones from SQLite.
    ids: list[str] = []
    cursor = 0
    while batch := await journal.read_ready(cursor, 500):
        ids.extend(json.loads(r.body)["id"] for r in batch)
        assert [r.dseq for r in batch] == list(range(cursor + 1, cursor + len(batch) + 1))
        cursor = batch[-1].dseq
    assert ids == [e.id for e in order]
    await journal.close()


async def test_one_read_returns_a_bounded_number_of_bytes(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    await journal.commit([event("L" * 1_000_000) for _ in range(20)])
    batch = await journal.read_ready(0, 500, max_bytes=3_000_000)
    assert len(batch) == 3  # the read stops at the event that reaches the budget
    batch = await journal.read_ready(0, 500)  # the default: READ_BYTES
    assert 1 <= len(batch) < 20
    assert len(await journal.read_ready(0, 500, max_bytes=1)) == 1  # always at least one
    await journal.close()


async def test_the_writer_is_stalled_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    journal = await opened(tmp_path)
    assert not journal.writer_stalled(0.0)  # idle, nothing pending: never stalled
    await journal.commit([event()])
    await asyncio.sleep(0.05)
    assert not journal.writer_stalled(0.0)

    blocker = sqlite3.connect(tmp_path / JOURNAL_FILE, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's BEGIN IMMEDIATE now waits (busy timeout)
    try:
        commit = asyncio.ensure_future(journal.commit([event()]))
        await asyncio.sleep(0.1)
        assert not journal.writer_stalled(0.5)
        assert await until(lambda: journal.writer_stalled(0.5), timeout=3)
        queued = asyncio.ensure_future(journal.commit([event()]))  # waits behind the stuck batch
        await asyncio.sleep(0.05)
        assert journal.writer_stalled(0.5)
        assert not commit.done()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.wait_for(asyncio.gather(commit, queued), 5)
    assert not journal.writer_stalled(0.5)
    await asyncio.sleep(0.05)
    assert not journal.writer_stalled(0.0)
    await journal.close()
