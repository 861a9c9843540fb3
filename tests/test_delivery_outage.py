"""A forward target that goes down and comes back, against a real HTTP receiver on loopback:
the backlog gauge moves meanwhile, the target is found again within seconds, and a reload
changes filters and retry settings without a restart."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.web

from wahookd.delivery import PROBE_SECONDS, SinkWorker
from wahookd.events import Event
from wahookd.journal import Journal
from wahookd.metrics import Metrics, make_metrics
from wahookd.settings import SinkSettings
from wahookd.sinks.forward import wahookd_register_sinks as forward_sinks
from wahookd.testing import build_sink

[FORWARD] = forward_sinks()


class Target:
    """A webhook receiver on a fixed loopback port: up (200), answering 503, or closed."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.state = "up"
        self.received: list[tuple[float, str]] = []  # (when, webhook-id) of every request
        target = self

        class Hook(tornado.web.RequestHandler):
            def post(self) -> None:
                target.received.append((time.monotonic(), self.request.headers["webhook-id"]))
                if target.state != "up":
                    self.set_status(503)

        self.app = tornado.web.Application([(r"/hook", Hook)])
        self.server: tornado.httpserver.HTTPServer | None = None
        self.listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def listen(self) -> None:
        self.server = tornado.httpserver.HTTPServer(self.app)
        self.server.listen(self.port, "127.0.0.1")

    def set(self, state: str) -> None:
        """ "up", "503" or "closed" (nothing listens: connections are refused)."""
        if state == "closed" and self.server is not None:
            self.server.stop()
            self.server = None
        elif state != "closed" and self.server is None:
            self.listen()
        self.state = state

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


class Recorder:
    """A sink that fails for the ids in `failing` (all of them while `down`)."""

    def __init__(self) -> None:
        self.down = False
        self.failing: set[str] = set()
        self.calls: list[str] = []
        self.got: list[str] = []

    async def deliver(self, event: dict[str, Any]) -> None:
        self.calls.append(event["id"])
        if self.down or event["id"] in self.failing:
            raise ConnectionError("target down")
        self.got.append(event["id"])


def event(event_id: str, kind: str = "message") -> Event:
    return Event(id=event_id, source="shop", provider="wasender", kind=kind, event="x", raw={})


def forward_table(target: Target, **overrides: Any) -> SinkSettings:
    values: dict[str, Any] = {
        "plugin": "forward",
        "url": target.url,
        "secret": "outage-test-secret",
        "timeout": 2,
    }
    values.update(overrides)
    return SinkSettings(**values)


async def started(
    journal: Journal, name: str, table: SinkSettings, sink: Any, metrics: Metrics
) -> tuple[SinkWorker, asyncio.Task[None]]:
    worker = SinkWorker(name, table, sink, journal, metrics)
    await worker.prepare()
    return worker, asyncio.get_running_loop().create_task(worker.run())


def forward_sink(table: SinkSettings, tmp_path: Path) -> Any:
    return build_sink(FORWARD, table.plugin_options(), state_dir=tmp_path, name="crm")


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def backlog(metrics: Metrics, sink: str) -> float | None:
    return metrics.registry.get_sample_value("wahookd_sink_backlog", {"sink": sink})


@pytest.mark.parametrize("outage", ["503", "closed"])
async def test_the_backlog_gauge_moves_while_the_target_is_down(tmp_path: Path, outage: str) -> None:
    """`status` said 10,073 waiting while the gauge read 1 for 340 s: it was only set between
    batches, and a batch held up by a retrying event does not end."""
    journal = Journal(tmp_path)
    journal.open()
    target = Target()
    metrics = make_metrics()
    table = forward_table(target, backoff_initial=0.05, backoff_max=0.2)
    worker, task = await started(journal, "crm", table, forward_sink(table, tmp_path), metrics)
    try:
        await journal.commit([event("before")])
        assert await until(lambda: len(target.received) == 1 and worker.cursor == 1, 3)
        assert backlog(metrics, "crm") == 0
        target.set(outage)
        readings = []
        for round_ in range(5):  # events keep arriving during the outage
            await journal.commit([event(f"during-{round_}-{i}") for i in range(10)])
            await asyncio.sleep(0.3)
            readings.append(backlog(metrics, "crm"))
        assert readings == [10.0, 20.0, 30.0, 40.0, 50.0]
        assert worker.cursor == 1  # nothing got through meanwhile
        target.set("up")
        assert await until(lambda: backlog(metrics, "crm") == 0, 10)
        assert worker.cursor == journal.last_dseq == 51
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)
        target.close()
        await journal.close()


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_a_target_that_comes_back_is_found_within_seconds_not_after_the_backoff(
    tmp_path: Path, concurrency: int
) -> None:
    """The receiver came back, and the first retry went out 161 s later (a 185 s backoff on
    the 9th attempt). Here the first failure already means a 20-40 s wait."""
    journal = Journal(tmp_path)
    journal.open()
    target = Target()
    target.set("503")
    table = forward_table(target, backoff_initial=40, backoff_max=300, concurrency=concurrency)
    worker, task = await started(journal, "crm", table, forward_sink(table, tmp_path), make_metrics())
    try:
        await journal.commit([event(f"e{i}") for i in range(20)])
        down_for = 2.5 * PROBE_SECONDS
        await asyncio.sleep(down_for)
        # Without hammering: the first tries, then one probe per PROBE_SECONDS for the sink.
        assert len(target.received) <= concurrency + down_for / PROBE_SECONDS + 1
        assert worker.cursor == 0
        target.set("up")
        back = time.monotonic()
        assert await until(lambda: worker.cursor == 20, PROBE_SECONDS + 3), target.received
        first_success = min(when for when, _ in target.received if when >= back)
        assert first_success - back <= PROBE_SECONDS + 0.5
        # Once one got through, the rest went at once, not each after its own backoff.
        assert time.monotonic() - first_success < 2
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)
        target.close()
        await journal.close()


async def test_bad_events_beside_good_ones_keep_their_backoff(tmp_path: Path) -> None:
    """The successes of good events right after bad ones failed are no sign of a target
    coming back: the bad ones' retries keep their schedule rather than follow each success."""
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder()
    sink.failing = {"bad1", "bad2", "bad3"}
    table = SinkSettings(plugin="test", concurrency=8, backoff_initial=0.4, backoff_max=10)
    worker, task = await started(journal, "s", table, sink, make_metrics())
    try:
        await journal.commit(
            [event("bad1"), event("bad2"), event("bad3")] + [event(f"g{i}") for i in range(5)]
        )
        await asyncio.sleep(1.0)
        assert sorted(sink.got) == [f"g{i}" for i in range(5)]
        for bad in sorted(sink.failing):  # 1 + retries after 0.2-0.4 s and after 0.4-0.8 s more
            assert 2 <= sink.calls.count(bad) <= 3, sink.calls
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)
        await journal.close()


async def test_reconfigure_swaps_filters_and_retry_settings_without_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sink = Recorder()
    metrics = make_metrics()
    table = SinkSettings(plugin="test", kinds=["message"], backoff_initial=60, backoff_max=60)
    worker, task = await started(journal, "s", table, sink, metrics)
    try:
        await journal.commit([event("m1"), event("s1", kind="status")])
        assert await until(lambda: worker.cursor == 2, 3)
        assert sink.got == ["m1"]

        worker.reconfigure(table.model_copy(update={"kinds": ["status"]}))
        await journal.commit([event("m2"), event("s2", kind="status")])
        assert await until(lambda: worker.cursor == 4, 3)
        assert sink.got == ["m1", "s2"]

        # An event waiting out a 30-60 s backoff goes on the new, shorter one.
        sink.failing = {"s3"}
        await journal.commit([event("s3", kind="status")])
        assert await until(lambda: sink.calls.count("s3") == 1, 3)
        sink.failing = set()
        worker.reconfigure(
            table.model_copy(update={"kinds": None, "backoff_initial": 0.05, "backoff_max": 0.1})
        )
        assert await until(lambda: worker.cursor == 5, 2)
        assert sink.got[-1] == "s3"

        # The attempt limit is the new one at the next failure; concurrency from the next batch.
        sink.failing = {"m4"}
        fast = {"kinds": None, "backoff_initial": 0.05, "backoff_max": 0.1}
        worker.reconfigure(table.model_copy(update={**fast, "max_attempts": 2, "concurrency": 4}))
        await journal.commit([event("m4"), event("m5")])
        assert await until(lambda: worker.cursor == 7, 5)
        assert sink.calls.count("m4") == 2
        assert await journal.dead_letter_counts() == {"s": 1}
        assert worker.table.concurrency == 4

        # A waiting event the new filters leave out is not tried again.
        sink.failing = {"m6"}
        worker.reconfigure(table)  # messages only, 30-60 s backoff
        await journal.commit([event("m6")])
        assert await until(lambda: sink.calls.count("m6") == 1, 3)
        worker.reconfigure(table.model_copy(update={"kinds": ["status"]}))
        assert await until(lambda: worker.cursor == 8, 2)
        assert sink.calls.count("m6") == 1
        assert await journal.dead_letter_counts() == {"s": 1}
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)
        await journal.close()
