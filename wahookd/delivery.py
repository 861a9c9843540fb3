"""Delivery: one worker per sink, each with its own position in the journal.

A worker reads ready events after its cursor, delivers the ones its filter matches, retries
a failing event with exponential backoff and jitter (or the target's `Retry-After`), and
dead-letters it after `max_attempts` tries or `max_age` seconds. It then lets the sink
`flush()` and records the new cursor, so a restart resumes after the last event the sink
made durable: delivery is at least once, and sinks that upsert by `id` see each event once.
Workers share nothing, so one stuck sink never delays another.

A target that is down is not left alone for the whole backoff: while an event waits longer
than `PROBE_SECONDS` and the sink's last attempt failed, it is tried again every
`PROBE_SECONDS` (one such probe per sink at a time, not counted against `max_attempts`, and
never before a `Retry-After`). The first success after `PROBE_SECONDS` or more of nothing but
failures wakes every event that waits for a retry, so the backlog goes out at once when the
target comes back. The `wahookd_sink_backlog` gauge moves with every commit, also while a
sink is retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError

from wahookd.errors import (
    ConfigError,
    DeliveryError,
    JournalError,
    PermanentDeliveryError,
    WahookdError,
)
from wahookd.events import event_ref, load_json
from wahookd.hookspecs import Sink, SinkContext
from wahookd.journal import Journal, ReadyEvent
from wahookd.metrics import Metrics
from wahookd.plugins import Registry
from wahookd.settings import Settings, SinkSettings, describe_errors

BATCH = 500
# The longest a down target goes untried while events wait for it: one request per sink this
# often is no load on anyone, and a target that comes back is found within it. A success
# after this long of nothing but failures means the target is back, and wakes every waiting
# event; after a shorter run it may be a good event beside bad ones, whose retries it must not
# hurry (they would burn through their attempts).
PROBE_SECONDS = 2.0


class Failure(NamedTuple):
    """Why one try of a delivery failed."""

    error: str
    retry_after: float | None = None  # the target's Retry-After, in seconds
    permanent: bool = False  # retrying cannot help: dead-letter now


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


async def call_optional(sink: Any, method: str) -> None:
    """Await `sink.<method>()` when the sink defines it."""
    function = getattr(sink, method, None)
    if function is not None:
        result = function()
        if inspect.isawaitable(result):
            await result


def received_epoch(body: str) -> float | None:
    received = load_json(body).get("received_at")
    try:
        return datetime.fromisoformat(received).timestamp() if isinstance(received, str) else None
    except ValueError:
        return None


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with full jitter over the upper half: [d/2, d]."""
    delay = min(maximum, initial * 2 ** (attempt - 1))
    return delay / 2 + random.random() * delay / 2  # noqa: S311 - jitter, not crypto


class SinkWorker:
    """Delivers the journal to one sink."""

    def __init__(
        self, name: str, table: SinkSettings, sink: Sink, journal: Journal, metrics: Metrics
    ) -> None:
        self.name = name
        self.table = table
        self.sink = sink
        self.journal = journal
        self.metrics = metrics
        self.log = structlog.get_logger("wahookd.delivery").bind(sink=name)
        self.cursor = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.idle = asyncio.Event()
        self.seconds = metrics.sink_delivery_seconds.labels(name)
        self.delivered = metrics.sink_deliveries.labels(name, "delivered")
        self.retried = metrics.sink_deliveries.labels(name, "retry")
        self.backlog = metrics.sink_backlog.labels(name)
        # When the oldest event this sink has not delivered was made durable; None: caught up.
        self._pending_since: float | None = None
        metrics.sink_oldest_pending.labels(name).set_function(self.oldest_pending_seconds)
        # What events waiting for a retry listen to: set and replaced on a recovery, a
        # reconfiguration and `stop()`; the counters tell which of them it was.
        self._changed = asyncio.Event()
        self._recoveries = 0
        self._generation = 0
        self._failing_since: float | None = None  # the sink's attempts all failed since then
        self._probe_after = 0.0  # monotonic time before which no probe goes out
        self._probing = False

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
        return 0.0 if since is None else max(0.0, time.time() - since)

    def _count_backlog(self) -> None:
        self.backlog.set(max(0, self.journal.last_dseq - self.cursor))

    def reconfigure(self, table: SinkSettings) -> None:
        """Apply a reloaded table: filters and retry settings decide what follows, events
        waiting for a retry included (a shorter `backoff_max` shortens their wait, an event the
        new filters leave out is not tried again); `concurrency` applies from the next batch.
        The plugin's own options are not re-read: changing those needs a new sink."""
        self.table = table
        self._generation += 1
        self._signal()

    async def _start(self) -> bool:
        """Start the sink, retrying while its target is down; False if stopped first.

        A database or broker that is down at boot must not keep the daemon (and the other
        sinks) from starting: events wait in the journal meanwhile.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                await call_optional(self.sink, "start")
            except Exception as exc:  # the sink boundary
                delay = backoff_delay(attempt, self.table.backoff_initial, self.table.backoff_max)
                self.log.error(
                    "sink_start_failed",
                    attempt=attempt,
                    retry_in=round(delay, 3),
                    error=str(exc) or type(exc).__name__,
                )
                if await self._sleep_or_stop(delay):
                    return False
                continue
            return True

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        """Deliver until stopped; after `stop()`, finish what is ready (no retry waits), then exit."""
        if not await self._start():
            return
        try:
            while True:
                self._wake.clear()
                try:
                    batch = await self.journal.read_ready(self.cursor, BATCH)
                except JournalError as exc:
                    self.log.error("journal_read_failed", error=str(exc))
                    if await self._sleep_or_stop(1.0):
                        break
                    continue
                self._count_backlog()
                self._pending_since = received_epoch(batch[0].body) if batch else None
                if not batch:
                    if self._stopping.is_set():
                        break
                    self.idle.set()
                    await self._wake.wait()
                    continue
                self.idle.clear()
                try:
                    done = await self._deliver_batch(batch)
                    if done > self.cursor:
                        await call_optional(self.sink, "flush")
                        await self.journal.save_cursor(self.name, done)
                        self.cursor = done
                        self._count_backlog()
                except Exception as exc:  # flush or the journal failed: retry the batch later
                    self.log.error("sink_batch_failed", error=str(exc) or type(exc).__name__)
                    if await self._sleep_or_stop(1.0):
                        break
                    continue
                if done < batch[-1].dseq:  # stopped while an event waited for a retry
                    break
        finally:
            await call_optional(self.sink, "close")

    async def _deliver_batch(self, batch: list[ReadyEvent]) -> int:
        """Deliver a batch; returns the dseq up to which every event is settled."""
        done = self.cursor
        window = self.table.concurrency
        if window == 1:  # in order, without a task per event
            for ready in batch:
                if not await self._deliver(ready):
                    return done
                done = ready.dseq
            return done
        for start in range(0, len(batch), window):
            part = batch[start : start + window]
            settled = await asyncio.gather(*(self._deliver(ready) for ready in part))
            for ready, ok in zip(part, settled, strict=True):
                if not ok:  # stopping mid-retry: keep the rest for after the restart
                    return done
                done = ready.dseq
        return done

    async def _deliver(self, ready: ReadyEvent) -> bool:
        """Deliver one event until it succeeds or is dead-lettered; False if stopped first."""
        event = load_json(ready.body)
        if not self.table.matches(event):
            return True
        first_try = time.monotonic()
        attempt = 0  # tries on the backoff's schedule, the ones `max_attempts` counts
        retry_at = 0.0
        probe = False
        recorded = False  # a `retries` row exists for `trace`
        while True:
            attempt += not probe
            failure = await self._attempt(event, probe)
            if failure is None:
                if recorded:
                    await self._note_retry(event, None)
                return True
            error, retry_after = failure.error, failure.retry_after
            table = self.table  # reloaded settings decide what follows
            now = time.monotonic()
            if (
                failure.permanent
                or (not probe and attempt >= table.max_attempts)
                or now - first_try >= table.max_age
            ):
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
        try:
            await self.sink.deliver(event)
        except PermanentDeliveryError as exc:
            return Failure(str(exc) or type(exc).__name__, permanent=True)
        except Exception as exc:  # the sink boundary: any failure means "retry later"
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            self._probe_after = max(self._probe_after, now + PROBE_SECONDS)
            self.retried.inc()
            retry_after = exc.retry_after if isinstance(exc, DeliveryError) else None
            return Failure(str(exc) or type(exc).__name__, retry_after)
        finally:
            self.seconds.observe(time.perf_counter() - started)
            if probe:
                self._probing = False
        self.delivered.inc()
        since, self._failing_since = self._failing_since, None
        if since is not None and time.monotonic() - since >= PROBE_SECONDS:
            self._recoveries += 1  # the target is back: every waiting event goes now
            self._signal()
        return None

    async def _wait_to_retry(self, event: dict[str, Any], failed_at: float, retry_at: float) -> str | None:
        """Wait for the event's next try: "retry" (its time came, or the target is back),
        "probe" (it is this sink's turn to probe the target), "dropped" (a reload's filters
        leave it out) or None (stopping)."""
        while True:
            if self._stopping.is_set():
                return None
            now = time.monotonic()
            if now >= retry_at:
                return "retry"
            may_probe = not self._probing and self._failing_since is not None
            if may_probe and now >= self._probe_after:
                self._probing = True  # until this probe's `_attempt` ends
                return "probe"
            wake_at = min(retry_at, self._probe_after) if may_probe else retry_at
            changed, recoveries, generation = self._changed, self._recoveries, self._generation
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=wake_at - now)
            if self._recoveries != recoveries:
                return "retry"
            if self._generation != generation:
                if not self.table.matches(event):
                    return "dropped"
                retry_at = min(retry_at, failed_at + self.table.backoff_max)

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleep `delay` seconds; true if asked to stop meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _dead_letter(self, ready: ReadyEvent, event: dict[str, Any], attempts: int, error: str) -> None:
        await self.journal.dead_letter(self.name, ready.seq, event, attempts, error[:1000])
        self.metrics.sink_deliveries.labels(self.name, "dead").inc()
        self.metrics.dead_letters.labels(self.name).inc()
        self.log.error(
            "sink_dead_letter", event_ref=event_ref(str(event.get("id"))), attempts=attempts, error=error
        )
