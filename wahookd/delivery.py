"""Delivery: one worker per sink, each with its own position in the journal.

A worker reads ready events after its position, delivers the ones its filter matches with
up to `concurrency` in flight, retries a failing event with exponential backoff and jitter
(or the target's `Retry-After`), and dead-letters it after `max_attempts` tries or
`max_age` seconds. Its position (the cursor) only passes events that are settled, all of
them up to it, and only after the sink's `flush()`: a restart resumes after the last event
the sink made durable, so delivery is at least once, and sinks that upsert by `id` see each
event once. Workers share nothing, so one stuck sink never delays another; within a sink a
retrying event holds back only itself (`ordering = "none"`) or its own chat
(`ordering = "chat"`), up to `WINDOW` events past the cursor.

`ordering = "chat"`: the events of one `chat_id` (events without one: one lane per source)
go one at a time, in journal order. After a crash, the events after the cursor are
delivered again in journal order, so each chat still sees its events in order.

A target that is down is not left alone for the whole backoff: while an event waits longer
than `PROBE_SECONDS` and the sink's last attempt failed, it is tried again every
`PROBE_SECONDS` (one such probe per sink at a time, not counted against `max_attempts`, and
never before a `Retry-After`). The first success after `PROBE_SECONDS` or more of nothing but
failures wakes every event that waits for a retry, so the backlog goes out at once when the
target comes back.

`pause_after = N`: N consecutive failed attempts open the circuit: the sink is paused, one
probe goes out every `backoff_max`, and the first success closes it. While paused nothing is
dead-lettered for `max_attempts` or `max_age`: the events wait in the journal. An operator's
`wahookd pause` holds every attempt, probes included, until `wahookd resume`.

`rate`: attempts (first tries and retries alike) are spaced `1/rate` seconds apart.
`redact`: the listed fields are removed (null) or, for contact fields, replaced by a keyed
hash stable for this sink, before the sink sees the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import random
import secrets
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from wahookd.errors import ConfigError, JournalError, WahookdError
from wahookd.events import event_ref, load_json
from wahookd.hookspecs import Sink, SinkContext
from wahookd.journal import Journal, ReadyEvent
from wahookd.lifecycle import Failure, SinkHandle
from wahookd.metrics import Metrics
from wahookd.plugins import Registry
from wahookd.settings import REDACT_HASH, REDACT_NULL, Settings, SinkSettings, describe_errors

BATCH = 500
# How far past its cursor a sink may deliver while the event at the cursor is retrying: the
# settled events above it are remembered in memory until the cursor can pass them.
WINDOW = 10_000
# ... and how many bytes of event bodies it holds unsettled in memory at most (at least one
# event): measured in a soak, 10,000 parsed events held during an outage were 80 MB of RSS.
WINDOW_BYTES = 4 * 1024 * 1024
# How often a busy sink flushes and records its position at most (one that was quiet for
# this long does it at once).
SAVE_SECONDS = 0.2
# The longest a down target goes untried while events wait for it: one request per sink this
# often is no load on anyone, and a target that comes back is found within it. A success
# after this long of nothing but failures means the target is back, and wakes every waiting
# event; after a shorter run it may be a good event beside bad ones, whose retries it must not
# hurry (they would burn through their attempts).
PROBE_SECONDS = 2.0
# A flush that fails (a full disk, a target down) is tried again, with every event since
# the recorded position, after the sink's backoff, at most this long apart: only a try finds
# the target back, and one error line a second for an hour's outage was 3,600 lines.
FLUSH_RETRY_MAX = 30.0
REDACT_KEY_FILE = "redact.key"


def build_sink(
    name: str,
    table: SinkSettings,
    registry: Registry,
    context: SinkContext,
    validation_context: dict[str, Any] | None = None,
) -> Sink:
    """Validate the sink's own keys with its plugin's model and build it.

    `validation_context` is `Settings.validation_context`: relative `_file` paths in the
    sink's options resolve as the core's do (`wahookd.settings.resolve_file`)."""
    spec = registry.sinks.get(table.plugin)
    if spec is None:
        known = ", ".join(sorted(registry.sinks)) or "none"
        raise ConfigError([f"sinks.{name}.plugin: unknown sink plugin {table.plugin!r} (installed: {known})"])
    try:
        options = spec.options.model_validate(table.plugin_options(), context=validation_context)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, prefix=("sinks", name))) from None
    try:
        return spec.factory(options, context)
    except WahookdError as exc:  # the sink refused its options (e.g. an unusable URL)
        raise ConfigError([f"sinks.{name}.{exc}"]) from None


def sink_context(name: str, settings: Settings) -> SinkContext:
    """What a sink of this configuration is told about where it runs."""
    return SinkContext(
        name=name,
        state_dir=settings.state.dir,
        durable=settings.state.durability == "fsync",
        log=structlog.get_logger("wahookd.sink").bind(sink=name),
    )


def received_epoch(body: str) -> float | None:
    return received_at(load_json(body))


def received_at(event: dict[str, Any]) -> float | None:
    received = event.get("received_at")
    try:
        return datetime.fromisoformat(received).timestamp() if isinstance(received, str) else None
    except ValueError:
        return None


async def set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; true if it was set.

    `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` drops a cancellation that
    comes as the event is set (it returns the result instead), and the cancelled task runs
    on: a worker that does not stop at shutdown."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with full jitter over the upper half: [d/2, d]."""
    delay = min(maximum, initial * 2 ** (attempt - 1))
    return delay / 2 + random.random() * delay / 2  # noqa: S311 - jitter, not crypto


# -- redaction ------------------------------------------------------------------------


def redaction_key(state_dir: Path) -> bytes:
    """This installation's secret for `redact` hashes, made once (0600 in the state dir):
    without it a hash of a phone number is a lookup away from the number."""
    path = state_dir / REDACT_KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(key.hex())
        return bytes.fromhex(path.read_text().strip())


class Redactor:
    """`redact` for one sink: null for content fields, a keyed hash for contact fields, the
    key derived per sink so two sinks' hashes of one number differ but each can join."""

    def __init__(self, install_key: bytes, sink: str, fields: list[str]) -> None:
        self.key = hmac.new(install_key, sink.encode(), hashlib.sha256).digest()
        self.null = [field for field in fields if field in REDACT_NULL]
        self.hashed = [field for field in fields if field in REDACT_HASH]

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        event = dict(event)
        for field in self.null:
            event[field] = None
        for field in self.hashed:
            value = event.get(field)
            if isinstance(value, str) and value:
                digest = hmac.new(self.key, value.encode(), hashlib.sha256).hexdigest()[:32]
                event[field] = f"redacted:{digest}"
        return event


# -- the worker -----------------------------------------------------------------------


class SinkWorker:
    """Delivers the journal to one sink."""

    def __init__(
        self,
        name: str,
        table: SinkSettings,
        sink: Sink | SinkHandle,
        journal: Journal,
        metrics: Metrics,
        *,
        redact_key: bytes = b"",
    ) -> None:
        self.name = name
        self.table = table
        self.log = structlog.get_logger("wahookd.delivery").bind(sink=name)
        self.handle = (
            sink
            if isinstance(sink, SinkHandle)
            else SinkHandle(name, sink, errors=metrics.sink_errors, log=self.log)
        )
        self.sink = self.handle.sink
        self.journal = journal
        self.metrics = metrics
        self.redact_key = redact_key
        self.redactor = Redactor(redact_key, name, table.redact) if table.redact else None
        self.cursor = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.idle = asyncio.Event()
        self.seconds = metrics.sink_delivery_seconds.labels(name)
        self.delivered = metrics.sink_deliveries.labels(name, "delivered")
        self.retried = metrics.sink_deliveries.labels(name, "retry")
        self.backlog = metrics.sink_backlog.labels(name)
        self.paused_gauge = metrics.sink_paused.labels(name)
        # When the oldest event this sink has not delivered was made durable; None: caught up.
        # Or that event's body, read when scraped: decoding it for every batch cost more.
        self._pending_since: float | str | None = None
        metrics.sink_oldest_pending.labels(name).set_function(self.oldest_pending_seconds)
        # What events waiting (for a retry, a pause, a lane) listen to: set and replaced on a
        # recovery, a reconfiguration, a pause or resume, and `stop()`.
        self._changed = asyncio.Event()
        self._recoveries = 0
        self._generation = 0
        self._failing_since: float | None = None  # the sink's attempts all failed since then
        self._probe_after = 0.0  # monotonic time before which no probe goes out
        self._probing = False
        self._consecutive_failures = 0
        self.circuit_open = False  # pause_after tripped
        self.operator_paused = False  # `wahookd pause`
        self._next_slot = 0.0  # `rate`: monotonic time of the next allowed attempt
        self._attempts_running = 0
        self._no_attempts = asyncio.Event()
        self._no_attempts.set()
        self._flushing = False
        self._flush_failures = 0  # failed flushes (or position saves) in a row
        self.flush_retry_in = 0.0  # the wait before the try after the last failed one

    @property
    def paused(self) -> bool:
        return self.circuit_open or self.operator_paused

    async def prepare(self) -> None:
        """Load the sink's position (before the daemon starts listening)."""
        self.cursor = await self.journal.cursor(self.name)
        self.journal.on_ready(self._events_ready)
        self._count_backlog()

    def _events_ready(self) -> None:
        self._wake.set()
        # Here rather than only between batches: a batch held up by a failing target can
        # take hours, and the gauge must still show what piles up behind it.
        self._count_backlog()

    def oldest_pending_seconds(self) -> float:
        """`wahookd_sink_oldest_pending_seconds`, computed when scraped: 0 when caught up."""
        since = self._pending_since
        if isinstance(since, str):
            since = received_epoch(since)
        return 0.0 if since is None else max(0.0, time.time() - since)

    def _count_backlog(self) -> None:
        self.backlog.set(max(0, self.journal.last_dseq - self.cursor))

    def reconfigure(self, table: SinkSettings) -> None:
        """Apply a reloaded table: filters, retry settings, ordering, rate, pause_after and
        redact decide what follows, events waiting for a retry included (a shorter
        `backoff_max` shortens their wait, an event the new filters leave out is not tried
        again). The plugin's own options are not re-read: changing those needs a new sink."""
        self.table = table
        self.redactor = Redactor(self.redact_key, self.name, table.redact) if table.redact else None
        if self.circuit_open and not table.pause_after:
            self._set_circuit(False)
        self._generation += 1
        self._signal()

    def set_operator_pause(self, paused: bool) -> None:
        if paused == self.operator_paused:
            return
        self.operator_paused = paused
        self.log.warning("sink_paused" if paused else "sink_resumed", by="operator")
        self._show_pause()
        self._signal()

    def _set_circuit(self, open_: bool) -> None:
        if open_ == self.circuit_open:
            return
        self.circuit_open = open_
        if open_:
            self.log.warning("sink_paused", by="circuit", consecutive_failures=self._consecutive_failures)
        else:
            self.log.warning("sink_resumed", by="circuit")
        self._show_pause()

    def _show_pause(self) -> None:
        self.paused_gauge.set(1 if self.paused else 0)

    async def _start(self) -> bool:
        """Start the sink, retrying while its target is down; False if stopped first.

        A database or broker that is down at boot must not keep the daemon (and the other
        sinks) from starting: events wait in the journal meanwhile.
        """
        attempt = 0
        while True:
            attempt += 1
            failure = await self.handle.start()
            if failure is None:
                return True
            delay = backoff_delay(attempt, self.table.backoff_initial, self.table.backoff_max)
            self.log.error(
                "sink_start_failed", attempt=attempt, retry_in=round(delay, 3), error=failure.error
            )
            if await self._sleep_or_stop(delay):
                return False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake.set()  # the scheduler looks again too (a resume, a reload)

    # -- the scheduler ----------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until stopped; after `stop()`, finish what is ready (no retry waits), then exit."""
        if not await self._start():
            return
        try:
            await self._schedule()
        finally:
            await self.handle.close()

    async def run_leased(self, leases: Any, lease: str) -> None:
        """`run` with several nodes (`state.backend = "postgres"`): deliver only while this
        node holds the sink's lease, from the position the last holder saved; on losing it,
        stop at once (what was in flight goes again from the next holder: at least once)."""
        leases.want(lease)
        if not await self._start():
            return
        try:
            while not self._stopping.is_set():
                if not leases.holds(lease):
                    if await self._sleep_or_stop(0.1):
                        return
                    continue
                self.cursor = await self.journal.cursor(self.name)
                self._count_backlog()
                schedule = asyncio.ensure_future(self._schedule())
                lost = asyncio.ensure_future(leases.wait_lost(lease))
                done, _ = await asyncio.wait({schedule, lost}, return_when=asyncio.FIRST_COMPLETED)
                if schedule in done:
                    lost.cancel()
                    schedule.result()
                    return
                self.log.warning("sink_lease_lost")
                schedule.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await schedule
        finally:
            await self.handle.close()

    async def _schedule(self) -> None:
        while self.table.concurrency == 1 and self.table.ordering == "none":
            if not await self._in_order():
                return
        # A reload may have asked for lanes meanwhile. After a failed flush the sink may have
        # lost what it took since its position: everything after it is delivered again.
        while await self._in_lanes():
            if await self._sleep_or_stop(self.flush_retry_in):
                return

    async def _in_order(self) -> bool:
        """One event at a time, in journal order: the default, without a task per event.
        False when stopped; True when a reload asked for concurrency or chat ordering.

        The position is recorded (flush, then cursor) when the sink has caught up, or every
        `SAVE_SECONDS` while it is busy: a flush per small batch under load was a flush and a
        thread hand-over per few events, on the loop the intake shares."""
        delivered = self.cursor  # what the sink has taken; `self.cursor` is what is saved
        last_save = time.monotonic()
        while True:
            self._wake.clear()
            try:
                batch = await self.journal.read_ready(delivered, BATCH)
            except JournalError as exc:
                self.log.error("journal_read_failed", error=str(exc))
                if await self._sleep_or_stop(1.0):
                    return False
                continue
            self._count_backlog()
            self._pending_since = batch[0].body if batch else None
            if not batch:
                if delivered > self.cursor:
                    # Caught up: flush and record at once, unless the last time was less than
                    # `SAVE_SECONDS` ago: then more events may come first (under load the
                    # sink catches up after every group commit, and a flush per commit was a
                    # thread hand-over and a journal write each).
                    wait = SAVE_SECONDS - (time.monotonic() - last_save)
                    if wait > 0 and not self._stopping.is_set() and await self._woken_within(wait):
                        continue
                    if not await self._save(delivered):
                        delivered = self.cursor  # the sink lost them: deliver them again
                        if await self._sleep_or_stop(self.flush_retry_in):
                            return False
                        continue
                    last_save = time.monotonic()
                if self._stopping.is_set():
                    return False
                if self.table.concurrency != 1 or self.table.ordering != "none":
                    return True
                self.idle.set()
                await self._wake.wait()
                continue
            self.idle.clear()
            for ready in batch:
                if not await self._deliver(ready, load_json(ready.body)):
                    break
                delivered = ready.dseq
            stopped = delivered < batch[-1].dseq  # stopping while an event waited for a retry
            if delivered > self.cursor and (stopped or time.monotonic() - last_save >= SAVE_SECONDS):
                if not await self._save(delivered):
                    delivered = self.cursor
                    if await self._sleep_or_stop(self.flush_retry_in):
                        return False
                    continue
                last_save = time.monotonic()
            if stopped:
                return False
            if self.table.concurrency != 1 or self.table.ordering != "none":  # a reload
                return delivered <= self.cursor or await self._save(delivered)

    async def _in_lanes(self) -> bool:
        """Up to `concurrency` events in flight; with `ordering = "chat"` one per chat, in
        journal order. The cursor passes the settled events at the head of the journal order;
        settled events above an unsettled one wait in memory, at most `WINDOW` of them, and
        the unsettled ones hold at most `WINDOW_BYTES` of bodies (parsed when they go).
        True when a flush failed: start again from the recorded position."""
        order: deque[tuple[int, float | None]] = deque()  # (dseq, received) past the cursor
        settled: set[int] = set()
        waiting: dict[Any, deque[ReadyEvent]] = {}  # lane -> its events
        runnable: deque[Any] = deque()  # lanes with waiting events and none in flight
        busy: set[Any] = set()  # lanes with an event in flight (chat ordering)
        tasks: dict[asyncio.Task[bool], tuple[Any, ReadyEvent]] = {}
        held = 0  # bytes of the bodies read and not settled
        read_to = position = self.cursor
        last_save = time.monotonic()
        restart = False

        def enqueue(lane: Any, ready: ReadyEvent, *, first: bool = False) -> None:
            lane_events = waiting.setdefault(lane, deque())
            if first:
                lane_events.appendleft(ready)
            else:
                lane_events.append(ready)
            if len(lane_events) == 1 and lane not in busy:
                runnable.append(lane)

        while True:
            self._wake.clear()
            if len(order) < WINDOW and held < WINDOW_BYTES and not self._stopping.is_set():
                try:
                    batch = await self.journal.read_ready(
                        read_to, min(BATCH, WINDOW - len(order)), WINDOW_BYTES - held
                    )
                except JournalError as exc:
                    self.log.error("journal_read_failed", error=str(exc))
                    if await self._sleep_or_stop(1.0):
                        break
                    continue
                for ready in batch:
                    read_to = ready.dseq
                    event = load_json(ready.body)
                    order.append((ready.dseq, received_at(event)))
                    if self.table.matches(event):
                        enqueue(self._lane(event), ready)
                        held += len(ready.body)
                    else:
                        settled.add(ready.dseq)
            for task in [task for task in tasks if task.done()]:
                lane, ready = tasks.pop(task)
                busy.discard(lane)
                if not task.cancelled() and task.exception() is None and task.result():
                    settled.add(ready.dseq)
                    held -= len(ready.body)
                    if lane in waiting and lane not in runnable:
                        runnable.append(lane)
                elif not task.cancelled() and task.exception() is not None:  # a bug: try again
                    self.log.error("sink_task_failed", error=repr(task.exception()))
                    enqueue(lane, ready, first=True)
                elif self.table.ordering == "chat":
                    # Stopping mid-retry: it goes after the next start, unsettled, so the
                    # cursor stays before it; nothing of its chat may overtake it meanwhile.
                    busy.add(lane)
            while runnable and len(tasks) < self.table.concurrency and not self.operator_paused:
                lane = runnable.popleft()
                lane_events = waiting[lane]
                ready = lane_events.popleft()
                if not lane_events:
                    del waiting[lane]
                if self.table.ordering == "chat":
                    busy.add(lane)  # its next event waits for this one
                elif lane in waiting:
                    runnable.appendleft(lane)
                task = asyncio.get_running_loop().create_task(
                    self._deliver(ready, load_json(ready.body)), name=f"deliver:{self.name}"
                )
                task.add_done_callback(lambda _: self._wake.set())
                tasks[task] = (lane, ready)
            while order and order[0][0] in settled:
                settled.discard(order[0][0])
                position = order.popleft()[0]
            self._pending_since = order[0][1] if order else None
            self._count_backlog()
            idle = not order and not tasks
            if position > self.cursor and (
                idle or self._stopping.is_set() or time.monotonic() - last_save >= SAVE_SECONDS
            ):
                if not await self._save(position):
                    restart = True
                    break
                last_save = time.monotonic()
            if self._stopping.is_set() and not tasks:
                break  # what is still waiting goes after the next start
            if idle:
                self.idle.set()
            else:
                self.idle.clear()
            if self._wake.is_set():
                continue
            # Sleep until a delivery settles, new events arrive, a pause or reload changes
            # something (all set `_wake`), or it is time to record the position.
            timeout = SAVE_SECONDS if position > self.cursor else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not restart and position > self.cursor:
            await self._save(position)
        return restart and not self._stopping.is_set()

    def _lane(self, event: dict[str, Any]) -> Any:
        if self.table.ordering != "chat":
            return None  # one lane: `concurrency` alone limits
        chat = event.get("chat_id")
        return ("chat", event.get("source"), chat) if chat else ("source", event.get("source"))

    async def _save(self, dseq: int) -> bool:
        """Flush the sink, then record its position; False when either failed (retried)."""
        if dseq <= self.cursor:
            return True
        self._flushing = True
        try:
            await self._no_attempts.wait()  # a flush never runs beside a deliver() call
            failure = await self.handle.flush()
        finally:
            self._flushing = False
            self._signal()
        if failure is None:
            try:
                await self.journal.save_cursor(self.name, dseq)
            except JournalError as exc:
                failure = Failure(str(exc))
        if failure is not None:
            self._flush_failures += 1
            table = self.table
            most = min(table.backoff_max, FLUSH_RETRY_MAX)
            self.flush_retry_in = (
                min(failure.retry_after, most)
                if failure.retry_after is not None
                else backoff_delay(self._flush_failures, table.backoff_initial, most)
            )
            self.log.error(
                "sink_batch_failed",
                error=failure.error,
                attempt=self._flush_failures,
                retry_in=round(self.flush_retry_in, 3),
            )
            return False
        self._flush_failures = 0
        self.cursor = dseq
        self._count_backlog()
        return True

    # -- one event --------------------------------------------------------------------

    async def _deliver(self, ready: ReadyEvent, event: dict[str, Any]) -> bool:
        """Deliver one event until it succeeds or is dead-lettered; False if stopped first."""
        if not self.table.matches(event):
            return True
        first_try = time.monotonic()
        attempt = 0  # tries on the backoff's schedule, the ones `max_attempts` counts
        retry_at = 0.0
        probe = False
        recorded = False  # a `retries` row exists for `trace`
        while True:
            if not await self._may_attempt(probe):
                return False
            attempt += not probe
            failure = await self._attempt(event, probe)
            if failure is None:
                if recorded:
                    await self._note_retry(event, None)
                return True
            error, retry_after = failure.error, failure.retry_after
            table = self.table  # reloaded settings decide what follows
            now = time.monotonic()
            exhausted = (not probe and attempt >= table.max_attempts) or now - first_try >= table.max_age
            if failure.permanent or (exhausted and not self.paused):
                await self._dead_letter(ready, event, attempt, error)
                if recorded:
                    await self._note_retry(event, None)
                return True
            if retry_after is not None:
                # The target's word, within our own limits: a far-off Retry-After must
                # not stall this sink past backoff_max or the event's max_age.
                delay = max(0.0, min(retry_after, table.backoff_max, table.max_age - (now - first_try)))
                retry_at = max(retry_at, now + delay) if probe else now + delay
                self._probe_after = max(self._probe_after, now + delay)  # no probe before it either
            elif not probe:
                retry_at = now + backoff_delay(attempt, table.backoff_initial, table.backoff_max)
            if probe:
                self.log.debug("sink_probe_failed", event_ref=event_ref(str(event.get("id"))), error=error)
            else:
                self.log.warning(
                    "sink_delivery_failed",
                    event_ref=event_ref(str(event.get("id"))),
                    attempt=attempt,
                    retry_in=round(retry_at - now, 3),
                    error=error,
                )
                await self._note_retry(event, (attempt, time.time() + retry_at - now, error))
                recorded = True
            outcome = await self._wait_to_retry(event, now, retry_at)
            if outcome is None:
                return False
            if outcome == "dropped":
                self.log.info("sink_event_filtered_out", event_ref=event_ref(str(event.get("id"))))
                return True
            probe = outcome == "probe"

    async def _may_attempt(self, probe: bool) -> bool:
        """Wait while the operator has paused the sink or it flushes, then for this attempt's
        `rate` slot; False when stopping meanwhile."""
        while self.operator_paused or self._flushing:
            if self._stopping.is_set():
                return False
            await self._changed.wait()
        if self._stopping.is_set() and probe:
            return False
        rate = self.table.rate
        if rate:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / rate
            if slot > now:
                await asyncio.sleep(slot - now)
        return True

    async def _note_retry(self, event: dict[str, Any], retry: tuple[int, float, str] | None) -> None:
        """Keep the journal's `retries` row (what `wahookd trace` shows) in step; it is only
        information, so a journal that cannot take it does not hold the delivery up."""
        try:
            if retry is None:
                await self.journal.clear_retry(self.name, str(event.get("id")))
            else:
                attempts, next_try, error = retry
                await self.journal.record_retry(
                    self.name, str(event.get("id")), attempts, next_try, error[:1000]
                )
        except JournalError as exc:
            self.log.warning("sink_retry_note_failed", error=str(exc))

    async def _attempt(self, event: dict[str, Any], probe: bool) -> Failure | None:
        """One try of `sink.deliver`; None when delivered."""
        started = time.perf_counter()
        if self.redactor is not None:
            event = self.redactor(event)
        self._attempts_running += 1
        self._no_attempts.clear()
        try:
            failure = await self.handle.deliver(event)
        finally:
            self._attempts_running -= 1
            if not self._attempts_running:
                self._no_attempts.set()
            self.seconds.observe(time.perf_counter() - started)
            if probe:
                self._probing = False
        if failure is not None:
            if failure.permanent:
                return failure
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            self._consecutive_failures += 1
            pause_after = self.table.pause_after
            if pause_after and self._consecutive_failures >= pause_after:
                self._set_circuit(True)
            # A paused sink probes once per backoff_max; a failing one every PROBE_SECONDS.
            interval = self.table.backoff_max if self.circuit_open else PROBE_SECONDS
            self._probe_after = max(self._probe_after, now + interval)
            self.retried.inc()
            if probe:
                self._probing = False
                self._signal()  # the waiting events look again: the next probe is theirs
            return failure
        self.delivered.inc()
        self._consecutive_failures = 0
        was_open = self.circuit_open
        self._set_circuit(False)
        since, self._failing_since = self._failing_since, None
        if was_open or (since is not None and time.monotonic() - since >= PROBE_SECONDS):
            self._recoveries += 1  # the target is back: every waiting event goes now
            self._signal()
        return None

    async def _wait_to_retry(self, event: dict[str, Any], failed_at: float, retry_at: float) -> str | None:
        """Wait for the event's next try: "retry" (its time came, or the target is back),
        "probe" (it is this sink's turn to probe the target), "dropped" (a reload's filters
        leave it out) or None (stopping). While the circuit is open only probes go out."""
        while True:
            if self._stopping.is_set():
                return None
            now = time.monotonic()
            if now >= retry_at and not self.circuit_open:
                return "retry"
            may_probe = not self._probing and self._failing_since is not None and not self.operator_paused
            if may_probe and now >= self._probe_after:
                self._probing = True  # until this probe's `_attempt` ends
                return "probe"
            if self.circuit_open:  # only probes; a probe in flight signals when it ends
                wake_at = self._probe_after if may_probe else now + self.table.backoff_max
            else:
                wake_at = min(retry_at, self._probe_after) if may_probe else retry_at
            changed, recoveries, generation = self._changed, self._recoveries, self._generation
            await set_within(changed, max(0.0, wake_at - now))
            if self._recoveries != recoveries:
                return "retry"
            if self._generation != generation:
                if not self.table.matches(event):
                    return "dropped"
                retry_at = min(retry_at, failed_at + self.table.backoff_max)

    async def _woken_within(self, seconds: float) -> bool:
        """Wait up to `seconds` for new events (or a stop); true if woken."""
        return await set_within(self._wake, seconds)

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleep `delay` seconds; true if asked to stop meanwhile."""
        return await set_within(self._stopping, delay)

    async def _dead_letter(self, ready: ReadyEvent, event: dict[str, Any], attempts: int, error: str) -> None:
        await self.journal.dead_letter(self.name, ready.seq, event, attempts, error[:1000])
        self.metrics.sink_deliveries.labels(self.name, "dead").inc()
        self.metrics.dead_letters.labels(self.name).inc()
        self.log.error(
            "sink_dead_letter", event_ref=event_ref(str(event.get("id"))), attempts=attempts, error=error
        )
