"""Sink workers: retries with backoff, dead letters, isolation between sinks, resuming."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from wahookd.delivery import SinkWorker, backoff_delay, set_within
from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.events import Event
from wahookd.journal import Journal
from wahookd.metrics import make_metrics
from wahookd.settings import SinkSettings


def event(event_id: str, kind: str = "message") -> Event:
    return Event(id=event_id, source="shop", provider="wasender", kind=kind, event="x", raw={})


class Recorder:
    """A sink that records what it got and fails while `failures` is positive."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RuntimeError("target down")
        self.got: list[str] = []
        self.calls = 0
        self.flushed = 0

    async def deliver(self, event: dict[str, Any]) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise self.error
        self.got.append(event["id"])

    async def flush(self) -> None:
        self.flushed += 1


def table(**overrides: Any) -> SinkSettings:
    values: dict[str, Any] = {"plugin": "test", "backoff_initial": 0.01, "backoff_max": 0.02}
    values.update(overrides)
    return SinkSettings(**values)


async def start(
    journal: Journal, name: str, sink: Recorder, **overrides: Any
) -> tuple[SinkWorker, asyncio.Task[None]]:
    worker = SinkWorker(name, table(**overrides), sink, journal, make_metrics())
    await worker.prepare()
    return worker, asyncio.get_running_loop().create_task(worker.run())


async def settle(*workers: SinkWorker, timeout: float = 5.0) -> None:
    async def idle() -> None:
        while not all(w.idle.is_set() and w.cursor == w.journal.last_dseq for w in workers):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(idle(), timeout)


async def stop(worker: SinkWorker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 5)


async def test_a_failing_sink_is_retried_then_succeeds(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder(failures=2)
    worker, task = await start(journal, "s", sink)
    await journal.commit([event("a"), event("b")])
    await settle(worker)
    assert sink.got == ["a", "b"]
    assert sink.calls == 4
    assert await journal.cursor("s") == 2
    await stop(worker, task)
    await journal.close()


async def test_dead_letter_at_the_attempt_limit_while_the_other_sink_keeps_receiving(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    broken = Recorder(failures=10**6)
    healthy = Recorder()
    w1, t1 = await start(journal, "broken", broken, max_attempts=3)
    w2, t2 = await start(journal, "healthy", healthy)
    await journal.commit([event("a"), event("b")])
    await settle(w1, w2)
    assert healthy.got == ["a", "b"]
    assert broken.calls == 6
    assert await journal.dead_letter_counts() == {"broken": 2}
    await stop(w1, t1)
    await stop(w2, t2)
    await journal.close()


async def test_a_stuck_sink_does_not_delay_another(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    stuck = Recorder(failures=10**6)
    healthy = Recorder()
    w1, t1 = await start(journal, "stuck", stuck, backoff_initial=60, backoff_max=60)
    w2, t2 = await start(journal, "healthy", healthy)
    await journal.commit([event(f"e{i}") for i in range(50)])
    await settle(w2)
    assert len(healthy.got) == 50
    assert stuck.got == []
    await stop(w1, t1)  # stopping interrupts the backoff sleep
    assert await journal.cursor("stuck") == 0
    await stop(w2, t2)
    await journal.close()


async def test_permanent_errors_dead_letter_at_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder(failures=1, error=PermanentDeliveryError("410 Gone"))
    worker, task = await start(journal, "s", sink, max_attempts=5)
    await journal.commit([event("a"), event("b")])
    await settle(worker)
    assert (sink.calls, sink.got) == (2, ["b"])
    await stop(worker, task)
    await journal.close()


async def test_retry_after_from_the_target_is_honoured(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder(failures=1, error=DeliveryError("429", retry_after=0.3))
    worker, task = await start(journal, "s", sink, backoff_initial=0.001, backoff_max=5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await journal.commit([event("a")])
    await settle(worker)
    assert loop.time() - began >= 0.3
    await stop(worker, task)
    await journal.close()


async def test_filters_skip_other_kinds_but_advance(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder()
    worker, task = await start(journal, "s", sink, kinds=["status"])
    await journal.commit([event("m1"), event("s1", kind="status"), event("m2")])
    await settle(worker)
    assert sink.got == ["s1"]
    assert await journal.cursor("s") == 3
    await stop(worker, task)
    await journal.close()


async def test_a_restart_resumes_where_the_sink_stopped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    first = Recorder()
    worker, task = await start(journal, "s", first)
    await journal.commit([event("a"), event("b")])
    await settle(worker)
    await stop(worker, task)
    await journal.commit([event("c")])  # arrives while the sink is down
    await journal.close()
    journal = Journal(tmp_path)
    journal.open()
    second = Recorder()
    worker, task = await start(journal, "s", second)
    await settle(worker)
    assert second.got == ["c"]
    assert second.flushed >= 1
    await stop(worker, task)
    await journal.close()


async def test_concurrent_delivery_keeps_every_event(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder(failures=3)
    worker, task = await start(journal, "s", sink, concurrency=8)
    await journal.commit([event(f"e{i}") for i in range(100)])
    await settle(worker)
    assert sorted(sink.got) == sorted(f"e{i}" for i in range(100))
    await stop(worker, task)
    await journal.close()


async def test_a_far_off_retry_after_is_capped_by_backoff_max(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder(failures=1, error=DeliveryError("503", retry_after=86400))
    worker, task = await start(journal, "s", sink, backoff_max=0.2)
    await journal.commit([event("a")])
    await settle(worker, timeout=3)
    assert sink.got == ["a"]
    await stop(worker, task)
    await journal.close()


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    delays = [backoff_delay(n, 1.0, 30.0) for n in range(1, 8)]
    assert 0.5 <= delays[0] <= 1.0
    assert 4.0 <= delays[3] <= 8.0
    assert all(d <= 30.0 for d in delays)
    assert json.dumps(delays)


class SlowToStart(Recorder):
    """A sink whose target is down at boot: start() fails twice."""

    def __init__(self) -> None:
        super().__init__()
        self.start_failures = 2

    async def start(self) -> None:
        if self.start_failures:
            self.start_failures -= 1
            raise ConnectionError("database is down")


async def test_a_sink_down_at_boot_starts_later_and_the_others_do_not_wait(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    late = SlowToStart()
    healthy = Recorder()
    w1, t1 = await start(journal, "late", late, backoff_initial=0.05, backoff_max=0.1)
    w2, t2 = await start(journal, "healthy", healthy)
    await journal.commit([event("a"), event("b")])
    await settle(w2)
    await settle(w1)
    assert healthy.got == ["a", "b"]
    assert late.got == ["a", "b"]
    assert late.start_failures == 0
    await stop(w1, t1)
    await stop(w2, t2)
    await journal.close()


async def test_a_concurrent_sink_never_idles_with_a_backlog(tmp_path: Path) -> None:
    # Completions were handled after the next dispatch, so each round of `concurrency`
    # deliveries sat out the 0.2 s save timer: ~20 events/s from a full journal.
    journal = Journal(tmp_path, durable=False, dedupe_capacity=100_000)
    journal.open()
    for batch in range(10):
        await journal.commit([event(f"b{batch}-{n}") for n in range(500)])
    sink = Recorder()
    worker, task = await start(journal, "crm", sink, concurrency=4)
    worker.cursor = 0  # the whole journal is its backlog
    await settle(worker, timeout=30)
    assert len(sink.got) == 5000
    await stop(worker, task)
    await journal.close()


class ForgetfulSink:
    """Buffers in deliver(), writes in flush(); its first flush fails and loses the buffer."""

    def __init__(self) -> None:
        self.buffer: list[str] = []
        self.stored: list[str] = []
        self.flushes = 0

    async def deliver(self, event: dict[str, Any]) -> None:
        self.buffer.append(event["id"])

    async def flush(self) -> None:
        self.flushes += 1
        buffered, self.buffer = self.buffer, []
        if self.flushes == 1:
            raise DeliveryError("disk full")
        self.stored.extend(buffered)


async def test_after_a_failed_flush_a_concurrent_sink_gets_every_event_again(tmp_path: Path) -> None:
    journal = Journal(tmp_path, durable=False)
    journal.open()
    sink = ForgetfulSink()
    worker = SinkWorker("s", table(concurrency=4, backoff_initial=0.01), sink, journal, make_metrics())  # type: ignore[arg-type]
    await worker.prepare()
    task = asyncio.get_running_loop().create_task(worker.run())
    await journal.commit([event(f"f{n}") for n in range(20)])
    await settle(worker, timeout=10)
    assert sorted(set(sink.stored)) == sorted(f"f{n}" for n in range(20))
    await stop(worker, task)
    await journal.close()


class FailingFlushSink:
    """Its flush fails `failures` times in a row (a full disk), then stores the buffer."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.buffer: set[str] = set()
        self.stored: set[str] = set()
        self.flushed_at: list[float] = []

    async def deliver(self, event: dict[str, Any]) -> None:
        self.buffer.add(event["id"])

    async def flush(self) -> None:
        self.flushed_at.append(asyncio.get_running_loop().time())
        if self.failures:
            self.failures -= 1
            raise DeliveryError("No space left on device")
        self.stored |= self.buffer
        self.buffer.clear()


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_failing_flush_is_retried_with_backoff_then_the_events_are_stored(
    tmp_path: Path, concurrency: int
) -> None:
    """Once a second, fixed, was an error line a second for as long as a disk stayed full."""
    journal = Journal(tmp_path, durable=False)
    journal.open()
    sink = FailingFlushSink(failures=4)
    worker = SinkWorker(
        "s",
        table(concurrency=concurrency, backoff_initial=0.2, backoff_max=1.6),
        sink,  # type: ignore[arg-type]
        journal,
        make_metrics(),
    )
    await worker.prepare()
    task = asyncio.get_running_loop().create_task(worker.run())
    await journal.commit([event(f"b{n}") for n in range(10)])
    await settle(worker, timeout=15)
    assert sink.stored == {f"b{n}" for n in range(10)}
    await asyncio.sleep(0.3)  # no flush while nothing is new
    gaps = [later - earlier for earlier, later in zip(sink.flushed_at, sink.flushed_at[1:])]
    assert len(gaps) == 4
    # The sink's backoff: each wait in [d/2, d], d doubling from 0.2 s (plus up to
    # SAVE_SECONDS before a caught-up sink flushes), where it was 1 s, fixed.
    assert gaps[0] < 0.6, gaps
    assert gaps[3] >= 0.8, gaps
    assert worker._flush_failures == 0  # a success starts the backoff over
    await stop(worker, task)
    await journal.close()


async def test_a_concurrent_sink_holds_a_bounded_number_of_bytes_while_its_target_is_down(
    tmp_path: Path,
) -> None:
    # 10,000 parsed events held in memory during a soak's outage were 80 MB of RSS: the
    # lanes hold at most WINDOW_BYTES of bodies that are not settled.
    from wahookd.delivery import WINDOW_BYTES

    journal = Journal(tmp_path, durable=False)
    journal.open()
    big = "x" * 100_000
    for n in range(200):
        await journal.commit(
            [
                Event(
                    id=f"big{n}",
                    source="shop",
                    provider="wasender",
                    kind="message",
                    event="x",
                    raw={"pad": big},
                )
            ]
        )
    sink = Recorder(failures=10**9)
    worker, task = await start(journal, "s", sink, concurrency=200, backoff_initial=5, backoff_max=5)
    worker.cursor = 0
    await asyncio.sleep(1.0)
    assert sink.calls <= WINDOW_BYTES // 100_000 + 2, sink.calls  # each event tried once so far
    await stop(worker, task)
    await journal.close()


async def test_a_wait_cancelled_as_its_event_is_set_is_still_cancelled() -> None:
    """Python 3.11's `asyncio.wait_for` returns the result when the cancellation comes as the
    event is set: a sink worker (or the media stage) cancelled at shutdown would run on."""
    for _ in range(20):
        event = asyncio.Event()
        waiting = asyncio.get_running_loop().create_task(set_within(event, 5))
        await asyncio.sleep(0)  # it waits now
        event.set()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
