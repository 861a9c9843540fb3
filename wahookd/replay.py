"""Replaying events to a sink from the CLI process: dead letters or the journal, with progress.

Used by `wahookd replay` (see `wahookd.admin`). The sink is built in this process, so a replay
works whether or not the daemon runs. A dead letter is deleted only after the sink has taken
the event and its `flush()` has returned; a failure stays, with its attempts and error updated.

A replay is watched by a person: it shows progress, ends with a summary (``delivered N, failed
M, first errors: ..., and K more``), and stops early when the target is plainly down. After an
event has failed every try, the next ones get one try each while the failures go on, and
`REPLAY_DOWN_AFTER` such events in a row stop the replay: the rest stay where they were (dead
letters untouched, the journal as it is), to be replayed once the target is back. Before
this, 18 dead letters against a down target took 27 s and printed 5 of the 18 failures.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from wahookd.errors import WahookdError
from wahookd.hookspecs import Sink
from wahookd.journal import JournalMaintenance
from wahookd.lifecycle import SinkHandle
from wahookd.settings import SinkSettings

REPLAY_BATCH = 200
# A replay is run by a person who is watching: a few quick tries, then report the failure
# and leave the dead letter in place, rather than the daemon's day-long retry schedule.
REPLAY_ATTEMPTS = 3
REPLAY_MAX_WAIT = 10.0
# Events in a row whose tries all failed with a retryable error: the target is down, stop.
REPLAY_DOWN_AFTER = 5
FIRST_ERRORS = 5  # failures named in the summary; the rest are counted


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

    def finish(self, stopped: bool = False) -> None:
        if not stopped:
            self.total = self.done  # the count was taken before filtering by --since
        self._show(final=True, stopped=stopped)

    def _show(self, final: bool, stopped: bool = False) -> None:
        total = max(self.total, self.done)
        percent = 100 * self.done // total if total else 100
        text = f"{self.label}: {self.done}/{total} ({percent}%), {self.failed} failed"
        if stopped:
            text += ", stopped"
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
    errors: list[str] = field(default_factory=list)  # the first FIRST_ERRORS failures
    not_tried: int = 0  # left as they were when the replay stopped early
    stopped: str | None = None  # why it stopped early

    def summary(self) -> str:
        """``delivered N, failed M, first errors: ..., and K more`` (and why it stopped)."""
        text = f"delivered {self.delivered}, failed {self.failed}"
        if self.errors:
            text += f", first errors: {'; '.join(self.errors)}"
            if self.failed > len(self.errors):
                text += f", and {self.failed - len(self.errors)} more"
        if self.stopped:
            text += f"; stopped early, {self.not_tried} not tried: {self.stopped}"
        return text


class TargetWatch:
    """Tells a target that is plainly down from events that fail: counts events in a row
    whose tries all failed with a retryable error (a permanent error is the event's own, and
    proves the target answers; a success ends the run)."""

    def __init__(self, limit: int = REPLAY_DOWN_AFTER) -> None:
        self.limit = limit
        self.failing = 0
        self.last_error = ""

    @property
    def down(self) -> bool:
        return self.failing >= self.limit

    def succeeded(self) -> None:
        self.failing = 0

    def failed(self, error: str) -> None:
        self.failing += 1
        self.last_error = error

    def reason(self) -> str:
        return (
            f"{self.failing} events in a row failed every try, so the target looks down "
            f"(last error: {self.last_error[:200]}); replay again once it is back"
        )


def dead_items(journal: JournalMaintenance, sink: str, since: float | None) -> Iterator[Item]:
    last = 0
    while True:
        rows = journal.dead_letter_page(sink, last, REPLAY_BATCH)
        if not rows:
            return
        for dead_id, event in rows:  # numbers exact, as the sinks are owed them
            last = dead_id
            received = received_epoch(event)
            if since is not None and received is not None and received < since:
                continue
            yield Item(event, dead_id)


def journal_items(journal: JournalMaintenance, since: float | None) -> Iterator[Item]:
    last = 0
    while True:
        rows = journal.ready_page(last, since or 0.0, REPLAY_BATCH)
        if not rows:
            return
        for dseq, event in rows:
            last = dseq
            yield Item(event)


def count_items(journal: JournalMaintenance, sink: str, dead: bool, since: float | None) -> int:
    if dead:
        return journal.count_dead_letters(sink)
    return journal.count_ready(since or 0.0)


async def deliver_with_retries(
    sink: SinkHandle, event: dict[str, Any], watch: TargetWatch | None = None
) -> tuple[str | None, int]:
    """Deliver one event: (None, attempts) on success, else (the last error, attempts);
    (None, 0) when `watch` says the target is down before the first try."""
    watch = watch or TargetWatch()
    attempt = 0
    last = ""
    while True:
        if watch.down:
            return (None, 0) if attempt == 0 else (last, attempt)
        # While events keep failing every try, one try each: the target has had its retries.
        tries = 1 if watch.failing else REPLAY_ATTEMPTS
        attempt += 1
        failure = await sink.deliver(event)
        if failure is None:
            watch.succeeded()
            return None, attempt
        last = failure.error
        if failure.permanent:
            watch.succeeded()  # the target answered: it is this event that cannot go
            return failure.error, attempt
        if attempt >= tries:
            watch.failed(failure.error)
            return failure.error, attempt
        wait = failure.retry_after
        await asyncio.sleep(min(REPLAY_MAX_WAIT, wait if wait is not None else 0.5 * attempt))


async def replay_sink(
    name: str,
    table: SinkSettings,
    sink: Sink,
    journal: JournalMaintenance,
    *,
    dead: bool,
    since: float | None,
    stream: TextIO | None = None,
) -> ReplayResult:
    """Deliver the sink's dead letters (or the journal) to it; see the module docstring."""
    result = ReplayResult(name)
    progress = Progress(f"replay {name}", count_items(journal, name, dead, since), stream)
    items = dead_items(journal, name, since) if dead else journal_items(journal, since)
    handle = SinkHandle(name, sink)
    watch = TargetWatch()
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
                await _replay_batch(handle, table, journal, batch, result, progress, watch)
                batch = []
                if watch.down:
                    break
        if batch and not watch.down:
            await _replay_batch(handle, table, journal, batch, result, progress, watch)
    finally:
        await handle.close()
    if watch.down:
        result.stopped = watch.reason()
        result.not_tried += sum(1 for item in items if dead or table.matches(item.event))
    progress.finish(stopped=watch.down)
    if result.failed or result.stopped:
        progress.stream.write(f"replay {name}: {result.summary()}\n")
        progress.stream.flush()
    return result


async def _replay_batch(
    sink: SinkHandle,
    table: SinkSettings,
    journal: JournalMaintenance,
    batch: list[Item],
    result: ReplayResult,
    progress: Progress,
    watch: TargetWatch,
) -> None:
    delivered: list[Item] = []
    window = table.concurrency
    for start in range(0, len(batch), window):
        part = batch[start : start + window]
        outcomes = await asyncio.gather(*(deliver_with_retries(sink, item.event, watch) for item in part))
        for item, (error, attempts) in zip(part, outcomes, strict=True):
            if attempts == 0:  # the target was down before its turn: left as it was
                result.not_tried += 1
                continue
            progress.step(error is None)
            if error is None:
                delivered.append(item)
                continue
            result.failed += 1
            if len(result.errors) < FIRST_ERRORS:
                result.errors.append(f"{item.event.get('id')}: {error}")
            if item.dead_id is not None:
                journal.note_replay_failure(item.dead_id, attempts, error[:1000])
    # Only what the sink has made durable leaves the dead-letter store.
    if delivered or not watch.down:
        failure = await sink.flush()
        if failure is not None:
            raise WahookdError(f"sink {sink.name} could not flush: {failure.error}")
    result.delivered += len(delivered)
    dead_ids = [item.dead_id for item in delivered if item.dead_id is not None]
    if dead_ids:
        journal.delete_dead_letter_ids(dead_ids)
