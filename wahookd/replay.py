"""Replaying events to a sink from the CLI process: dead letters or the journal, with progress.

Used by `wahookd replay` (see `wahookd.admin`). The sink is built in this process, so a replay
works whether or not the daemon runs. A dead letter is deleted only after the sink has taken
the event and its `flush()` has returned; a failure stays, with its attempts and error updated.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from wahookd.errors import WahookdError
from wahookd.events import load_json
from wahookd.hookspecs import Sink
from wahookd.lifecycle import SinkHandle
from wahookd.settings import SinkSettings

REPLAY_BATCH = 200
# A replay is run by a person who is watching: a few quick tries, then report the failure
# and leave the dead letter in place, rather than the daemon's day-long retry schedule.
REPLAY_ATTEMPTS = 3
REPLAY_MAX_WAIT = 10.0


def parse_since(text: str | None) -> float | None:
    """``--since``: an RFC 3339 time (or a date) as epoch seconds; naive times are UTC."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise WahookdError(
            f"--since: expected an RFC 3339 time like 2026-11-26T10:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def received_epoch(event: dict[str, Any]) -> float | None:
    value = event.get("received_at")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- progress -------------------------------------------------------------------------


class Progress:
    """A ``\\r`` counter on a terminal; a line every few seconds otherwise (logs, CI)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = 0.1 if self.tty else 5.0
        self.done = 0
        self.failed = 0
        self._shown = 0.0
        self._shown_text = ""

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.monotonic()
        if now - self._shown >= self.every:
            self._shown = now
            self._show(final=False)

    def finish(self) -> None:
        self.total = self.done  # the count was taken before filtering by --since
        self._show(final=True)

    def _show(self, final: bool) -> None:
        total = max(self.total, self.done)
        percent = 100 * self.done // total if total else 100
        text = f"{self.label}: {self.done}/{total} ({percent}%), {self.failed} failed"
        if text == self._shown_text and not (final and self.tty):
            return
        self._shown_text = text
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# -- replay -----------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One event to replay; `dead_id` is its dead_letters row, if it came from there."""

    event: dict[str, Any]
    dead_id: int | None = None


@dataclass(slots=True)
class ReplayResult:
    sink: str
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def dead_items(conn: sqlite3.Connection, sink: str, since: float | None) -> Iterator[Item]:
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, body FROM dead_letters WHERE sink = ? AND id > ? ORDER BY id LIMIT ?",
            (sink, last, REPLAY_BATCH),
        ).fetchall()
        if not rows:
            return
        for dead_id, body in rows:
            last = dead_id
            event = load_json(body)  # numbers exact, as the sinks are owed them
            received = received_epoch(event)
            if since is not None and received is not None and received < since:
                continue
            yield Item(event, dead_id)


def journal_items(conn: sqlite3.Connection, since: float | None) -> Iterator[Item]:
    last = 0
    while True:
        rows = conn.execute(
            "SELECT dseq, body FROM events WHERE dseq > ? AND received_at >= ? ORDER BY dseq LIMIT ?",
            (last, since or 0.0, REPLAY_BATCH),
        ).fetchall()
        if not rows:
            return
        for dseq, body in rows:
            last = dseq
            yield Item(load_json(body))


def count_items(conn: sqlite3.Connection, sink: str, dead: bool, since: float | None) -> int:
    if dead:
        return int(conn.execute("SELECT count(*) FROM dead_letters WHERE sink = ?", (sink,)).fetchone()[0])
    row = conn.execute(
        "SELECT count(*) FROM events WHERE dseq IS NOT NULL AND received_at >= ?", (since or 0.0,)
    ).fetchone()
    return int(row[0])


async def deliver_with_retries(sink: SinkHandle, event: dict[str, Any]) -> tuple[str | None, int]:
    """Deliver one event: (None, attempts) on success, else (the last error, attempts)."""
    attempt = 0
    while True:
        attempt += 1
        failure = await sink.deliver(event)
        if failure is None:
            return None, attempt
        if failure.permanent or attempt >= REPLAY_ATTEMPTS:
            return failure.error, attempt
        wait = failure.retry_after
        await asyncio.sleep(min(REPLAY_MAX_WAIT, wait if wait is not None else 0.5 * attempt))


async def replay_sink(
    name: str,
    table: SinkSettings,
    sink: Sink,
    conn: sqlite3.Connection,
    *,
    dead: bool,
    since: float | None,
    stream: TextIO | None = None,
) -> ReplayResult:
    """Deliver the sink's dead letters (or the journal) to it; see the module docstring."""
    result = ReplayResult(name)
    progress = Progress(f"replay {name}", count_items(conn, name, dead, since), stream)
    items = dead_items(conn, name, since) if dead else journal_items(conn, since)
    handle = SinkHandle(name, sink)
    failure = await handle.start()
    if failure is not None:
        raise WahookdError(f"sink {name} did not start: {failure.error}")
    try:
        batch: list[Item] = []
        for item in items:
            if not dead and not table.matches(item.event):
                result.skipped += 1
                progress.step(True)
                continue
            batch.append(item)
            if len(batch) >= REPLAY_BATCH:
                await _replay_batch(handle, table, conn, batch, result, progress)
                batch = []
        if batch:
            await _replay_batch(handle, table, conn, batch, result, progress)
    finally:
        await handle.close()
    progress.finish()
    return result


async def _replay_batch(
    sink: SinkHandle,
    table: SinkSettings,
    conn: sqlite3.Connection,
    batch: list[Item],
    result: ReplayResult,
    progress: Progress,
) -> None:
    delivered: list[Item] = []
    window = table.concurrency
    for start in range(0, len(batch), window):
        part = batch[start : start + window]
        outcomes = await asyncio.gather(*(deliver_with_retries(sink, item.event) for item in part))
        for item, (error, attempts) in zip(part, outcomes, strict=True):
            progress.step(error is None)
            if error is None:
                delivered.append(item)
                continue
            result.failed += 1
            if len(result.errors) < 5:
                result.errors.append(f"{item.event.get('id')}: {error}")
            if item.dead_id is not None:
                conn.execute(
                    "UPDATE dead_letters SET attempts = attempts + ?, error = ?, failed_at = ? WHERE id = ?",
                    (attempts, error[:1000], time.time(), item.dead_id),
                )
    # Only what the sink has made durable leaves the dead-letter store.
    failure = await sink.flush()
    if failure is not None:
        raise WahookdError(f"sink {sink.name} could not flush: {failure.error}")
    result.delivered += len(delivered)
    dead_ids = [(item.dead_id,) for item in delivered if item.dead_id is not None]
    if dead_ids:
        conn.executemany("DELETE FROM dead_letters WHERE id = ?", dead_ids)
