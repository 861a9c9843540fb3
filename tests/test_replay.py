"""`wahookd replay` for people: progress, a final summary naming the first errors and counting
the rest, and an early stop when the target is plainly down (issue 16, point 4)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from wahookd.events import Event
from wahookd.journal import Journal
from wahookd.lifecycle import SinkHandle
from wahookd.replay import REPLAY_ATTEMPTS, ReplayResult, TargetWatch, deliver_with_retries
from wahookd.testing import CaptureOptions, CaptureSink, make_event


def wahookd(*argv: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", *argv], capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


def dead_letters(tmp_path: Path, sink: str, ids: list[str]) -> Path:
    """A state directory whose journal holds `ids` as dead letters of `sink` (10 attempts)."""
    state = tmp_path / "state"

    async def fill() -> None:
        journal = Journal(state, durable=False)
        journal.open()
        for dead_id in ids:
            event = Event(id=dead_id, source="shop", provider="wasender", kind="message", event="x", raw={})
            body = {**event.to_dict(), "received_at": "2026-11-26T10:00:00Z"}
            await journal.dead_letter(sink, 1, body, 10, "HTTP 503")
        await journal.close()

    asyncio.run(fill())
    return state


def attempts(state: Path) -> dict[str, int]:
    with sqlite3.connect(state / "journal.db") as conn:
        return dict(conn.execute("SELECT event_id, attempts FROM dead_letters ORDER BY id").fetchall())


def forward_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "wahookd.toml"
    config.write_text(
        f'[state]\ndir = "{tmp_path / "state"}"\ndurability = "os"\n'
        f'[sinks.crm]\nplugin = "forward"\nurl = "{url}"\nsecret = "s"\ntimeout = 5\n'
    )
    return config


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


def test_replay_against_a_down_target_stops_early_and_says_what_it_left(tmp_path: Path) -> None:
    ids = [f"d{n:02d}" for n in range(18)]
    state = dead_letters(tmp_path, "crm", ids)
    config = forward_config(tmp_path, f"http://127.0.0.1:{closed_port()}/hook")

    started = time.monotonic()
    code, out, err = wahookd("replay", "--config", str(config), "--dead")
    took = time.monotonic() - started

    assert code == 1
    assert took < 12  # was 27 s: three tries of each of the 18
    assert "replay crm: 5/18 (27%), 5 failed, stopped\n" in err
    [summary] = [line for line in err.splitlines() if line.startswith("replay crm: delivered")]
    assert summary.startswith("replay crm: delivered 0, failed 5, first errors: d00: ")
    assert "; d04: " in summary
    assert "and " not in summary.split("; stopped early")[0]  # all five failures are named
    assert (
        "; stopped early, 13 not tried: 5 events in a row failed every try, so the target looks down"
        in summary
    )
    assert summary.endswith("; replay again once it is back")
    assert "0 delivered, 5 failed" in out
    tries = attempts(state)
    assert sorted(tries) == ids  # every dead letter is still there
    assert tries["d00"] == 10 + REPLAY_ATTEMPTS  # the first had its retries...
    assert [tries[f"d0{n}"] for n in range(1, 5)] == [11] * 4  # ...the next ones one try each
    assert {tries[i] for i in ids[5:]} == {10}  # the rest were not touched


class GoneHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(410)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gone_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), GoneHandler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_the_summary_names_the_first_errors_and_counts_the_rest(tmp_path: Path, gone_url: str) -> None:
    ids = [f"g{n}" for n in range(8)]
    state = dead_letters(tmp_path, "crm", ids)
    code, _out, err = wahookd("replay", "--config", str(forward_config(tmp_path, gone_url)), "--dead")
    assert code == 1
    assert "replay crm: 8/8 (100%), 8 failed\n" in err  # a target that answers is not down
    named = "; ".join(f"g{n}: HTTP 410 Gone" for n in range(5))
    assert f"replay crm: delivered 0, failed 8, first errors: {named}, and 3 more\n" in err
    assert set(attempts(state).values()) == {11}  # permanent: one try each, none skipped


def test_a_clean_replay_prints_no_summary_of_failures(tmp_path: Path) -> None:
    state = dead_letters(tmp_path, "archive", ["a1", "a2"])
    config = tmp_path / "wahookd.toml"
    config.write_text(
        f'[state]\ndir = "{state}"\ndurability = "os"\n'
        f'[sinks.archive]\nplugin = "file"\npath = "{tmp_path / "a.jsonl"}"\n'
    )
    code, out, err = wahookd("replay", "--config", str(config), "--dead")
    assert code == 0, err
    assert err.endswith("replay archive: 2/2 (100%), 0 failed\n")
    assert "replay archive (dead letters): 2 delivered, 0 failed" in out


def test_after_one_event_fails_every_try_the_next_get_one_try_and_a_success_ends_the_run() -> None:
    async def scenario() -> None:
        sink = CaptureSink(CaptureOptions(fail_times=REPLAY_ATTEMPTS + 1, retry_after=0))
        handle = SinkHandle("capture", sink)
        watch = TargetWatch(limit=3)
        first, second, third = make_event(), make_event(), make_event()
        assert await deliver_with_retries(handle, first, watch) == (
            "capture: told to fail (" + first["id"] + ")",
            3,
        )
        assert watch.failing == 1
        error, tries = await deliver_with_retries(handle, second, watch)
        assert (error is not None, tries) == (True, 1)  # one try while the failures go on
        assert await deliver_with_retries(handle, third, watch) == (None, 1)
        assert watch.failing == 0  # the target answered again
        assert sink.ids == [third["id"]]

        down = CaptureSink(CaptureOptions(fail_times=100, retry_after=0))
        handle = SinkHandle("capture", down)
        watch = TargetWatch(limit=2)
        for _ in range(2):
            await deliver_with_retries(handle, make_event(), watch)
        assert watch.down
        calls = down.attempts
        assert await deliver_with_retries(handle, make_event(), watch) == (None, 0)  # not tried
        assert down.attempts == calls

    asyncio.run(scenario())


def test_a_permanent_error_is_the_events_own_and_does_not_count_the_target_as_down() -> None:
    async def scenario() -> None:
        sink = CaptureSink(CaptureOptions(fail_times=100, permanent=True))
        handle = SinkHandle("capture", sink)
        watch = TargetWatch(limit=2)
        for _ in range(5):
            error, tries = await deliver_with_retries(handle, make_event(), watch)
            assert error is not None
            assert tries == 1
        assert not watch.down

    asyncio.run(scenario())


def test_the_summary_reads_delivered_failed_first_errors_and_more() -> None:
    result = ReplayResult("crm", delivered=3, failed=7, errors=[f"e{n}: HTTP 503" for n in range(5)])
    assert result.summary() == (
        "delivered 3, failed 7, first errors: e0: HTTP 503; e1: HTTP 503; e2: HTTP 503; e3: HTTP 503; "
        "e4: HTTP 503, and 2 more"
    )
    assert ReplayResult("crm", delivered=2).summary() == "delivered 2, failed 0"
