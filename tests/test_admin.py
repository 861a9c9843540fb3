"""`wahookd status`, `replay` and `plugins` against a real journal written by `Journal`."""

from __future__ import annotations

import asyncio
import io
import json
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

from wahookd.cli import main
from wahookd.errors import WahookdError
from wahookd.events import Event
from wahookd.journal import Journal
from wahookd.replay import Progress, parse_since


def wahookd(*argv: str) -> tuple[int, str, str]:
    """Run the real `wahookd` command line in a child process."""
    done = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", *argv], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


def event(event_id: str, kind: str = "message", media: bool = False) -> Event:
    return Event(
        id=event_id,
        source="shop",
        provider="wasender",
        kind=kind,
        event="messages.upsert",
        raw={"key": {"id": event_id}},
        message_id=event_id,
        type="text",
        text=f"hi {event_id}",
        media={"mime_type": "image/jpeg"} if media else None,
    )


def write_config(tmp_path: Path, sinks: str, capacity: int = 1000) -> Path:
    config = tmp_path / "wahookd.toml"
    config.write_text(
        f'[state]\ndir = "{tmp_path / "state"}"\ndurability = "os"\n[dedupe]\ncapacity = {capacity}\n' + sinks
    )
    return config


def fill_journal(
    state_dir: Path,
    ids: list[str],
    *,
    media_ids: tuple[str, ...] = (),
    cursors: dict[str, int] | None = None,
    dead: dict[str, list[str]] | None = None,
) -> None:
    async def fill() -> None:
        journal = Journal(state_dir, durable=False)
        journal.open()
        await journal.commit([event(i) for i in ids] + [event(i, media=True) for i in media_ids])
        for sink, dseq in (cursors or {}).items():
            await journal.save_cursor(sink, dseq)
        for sink, dead_ids in (dead or {}).items():
            for dead_id in dead_ids:
                body = {**event(dead_id).to_dict(), "received_at": "2026-11-26T10:00:00Z"}
                await journal.dead_letter(sink, 1, body, 10, "HTTP 410 Gone")
        await journal.close()

    asyncio.run(fill())


def dead_letter_ids(state_dir: Path, sink: str) -> list[str]:
    with sqlite3.connect(state_dir / "journal.db") as conn:
        rows = conn.execute(
            "SELECT event_id FROM dead_letters WHERE sink = ? ORDER BY id", (sink,)
        ).fetchall()
    return [row[0] for row in rows]


FILE_SINKS = """
[sinks.archive]
plugin = "file"
path = "archive.jsonl"

[sinks.crm]
plugin = "file"
path = "crm.jsonl"
kinds = ["status"]
"""


def test_status_shows_backlog_dead_letters_media_and_dedupe_fill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, FILE_SINKS, capacity=1000)
    state = tmp_path / "state"
    fill_journal(
        state,
        [f"m{n}" for n in range(10)],
        media_ids=("img1", "img2"),
        cursors={"archive": 10, "crm": 4},
        dead={"crm": ["m1", "m2"], "gone": ["m3"]},
    )

    assert main(["status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["events"] == 12
    assert status["bytes"] > 0
    assert status["media_pending"] == 2
    assert status["media_oldest_seconds"] < 60
    assert (status["dedupe_entries"], status["dedupe_capacity"]) == (12, 1000)
    sinks = {sink["name"]: sink for sink in status["sinks"]}
    assert sinks["archive"]["backlog"] == 0
    assert sinks["archive"]["oldest_pending_seconds"] is None
    assert sinks["crm"]["backlog"] == 6
    assert sinks["crm"]["dead_letters"] == 2
    assert sinks["crm"]["oldest_pending_seconds"] < 60
    assert sinks["gone"]["plugin"] is None
    assert sinks["gone"]["dead_letters"] == 1

    assert main(["status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "12 rows" in text
    assert "2 waiting for download" in text
    assert "12 of 1000 (1.2%)" in text
    crm_line = next(line for line in text.splitlines() if line.startswith("crm "))
    assert crm_line.split()[1:3] == ["file", "6"]
    assert crm_line.split()[-1] == "2"
    assert "(not configured)" in text


def test_status_without_a_journal_is_a_clear_operator_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    code, _out, err = wahookd("status", "--config", str(config))
    assert code == 1
    assert err.startswith("wahookd: error: no journal at ")
    assert "Traceback" not in err


def test_status_reads_while_another_connection_holds_a_write_transaction(tmp_path: Path) -> None:
    config = write_config(tmp_path, FILE_SINKS)
    state = tmp_path / "state"
    fill_journal(state, ["a", "b"], cursors={"archive": 0})
    writer = sqlite3.connect(state / "journal.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM events")
    try:  # WAL: a reader sees the last committed state and is not blocked by the writer
        code, out, err = wahookd("status", "--config", str(config), "--json")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert code == 0, err
    assert json.loads(out)["events"] == 2


def test_replay_dead_delivers_flushes_and_deletes_the_dead_letters(tmp_path: Path) -> None:
    config = write_config(tmp_path, FILE_SINKS)
    state = tmp_path / "state"
    fill_journal(
        state, ["m1"], cursors={"archive": 1, "crm": 1}, dead={"crm": ["d1", "d2", "d3"], "archive": ["d9"]}
    )

    code, out, err = wahookd("replay", "--config", str(config), "--sink", "crm", "--dead")
    assert code == 0, err
    assert "replay crm (dead letters): 3 delivered, 0 failed" in out
    assert "replay crm: 3/3 (100%), 0 failed" in err  # no TTY: plain progress lines
    lines = (state / "crm.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["d1", "d2", "d3"]
    assert dead_letter_ids(state, "crm") == []
    assert dead_letter_ids(state, "archive") == ["d9"]  # another sink's are left alone


class GoneHandler(BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(410)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gone_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), GoneHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_replay_dead_keeps_failures_and_exits_nonzero(tmp_path: Path, gone_server: str) -> None:
    config = write_config(tmp_path, f'[sinks.crm]\nplugin = "forward"\nurl = "{gone_server}"\nsecret = "s"\n')
    state = tmp_path / "state"
    fill_journal(state, [], dead={"crm": ["d1", "d2"]})

    code, out, _err = wahookd("replay", "--config", str(config), "--dead")
    assert code == 1
    assert "2 delivered" not in out
    assert "0 delivered, 2 failed" in out
    assert "d1: HTTP 410" in out
    assert dead_letter_ids(state, "crm") == ["d1", "d2"]
    with sqlite3.connect(state / "journal.db") as conn:
        attempts = [row[0] for row in conn.execute("SELECT attempts FROM dead_letters")]
    assert attempts == [11, 11]  # a permanent error is not retried within the replay


def test_replay_of_the_journal_applies_the_sink_filter_and_since(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, '[sinks.archive]\nplugin = "file"\npath = "a.jsonl"\nkinds = ["message"]\n'
    )
    state = tmp_path / "state"

    async def fill() -> None:
        journal = Journal(state, durable=False)
        journal.open()
        await journal.commit([event("old")])
        await journal.commit([event("s1", kind="status"), event("new")])
        await journal.close()

    asyncio.run(fill())
    with sqlite3.connect(state / "journal.db") as conn:  # make "old" a day older
        conn.execute("UPDATE events SET received_at = received_at - 86400 WHERE id = 'old'")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))

    code, out, err = wahookd("replay", "--config", str(config), "--since", since)
    assert code == 0, err
    assert "1 delivered, 0 failed, 1 not matching the sink's filter" in out
    ids = [json.loads(line)["id"] for line in (state / "a.jsonl").read_text().splitlines()]
    assert ids == ["new"]


def test_replay_of_an_unknown_sink_names_the_configured_ones(tmp_path: Path) -> None:
    config = write_config(tmp_path, FILE_SINKS)
    fill_journal(tmp_path / "state", [])
    code, _, err = wahookd("replay", "--config", str(config), "--sink", "nope")
    assert code == 1
    assert err.strip() == "wahookd: error: no sink 'nope' in the configuration (configured: archive, crm)"


def test_since_must_be_an_rfc3339_time() -> None:
    assert parse_since("2026-11-26T10:00:00Z") == parse_since("2026-11-26T11:00:00+01:00")
    assert parse_since(None) is None
    with pytest.raises(WahookdError, match="--since"):
        parse_since("yesterday")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal() -> None:
    stream = FakeTTY()
    progress = Progress("replay crm", 3, stream)
    for ok in (True, False, True):
        progress.step(ok)
    progress.finish()
    text = stream.getvalue()
    assert text.startswith("\rreplay crm: 1/3")
    assert text.endswith("\rreplay crm: 3/3 (100%), 1 failed\n")
    assert text.count("\n") == 1


def test_plugins_lists_builtin_sinks_and_providers(tmp_path: Path) -> None:
    code, out, err = wahookd("plugins")
    assert code == 0, err
    assert "wahookd.sinks.forward  [built-in]" in out
    assert "  sink forward: POST events as JSON" in out
    assert "  sink sql: " in out
    assert "  sink file: " in out


def test_replay_retries_a_transient_failure_and_flushes_before_deleting(tmp_path: Path) -> None:
    from wahookd.admin import open_journal
    from wahookd.replay import replay_sink
    from wahookd.settings import SinkSettings
    from wahookd.testing import CaptureOptions, CaptureSink

    state = tmp_path / "state"
    fill_journal(state, [], dead={"capture": ["d1", "d2"]})
    sink = CaptureSink(CaptureOptions(fail_times=1, retry_after=0))
    conn = open_journal(state, write=True)
    stream = io.StringIO()
    result = asyncio.run(
        replay_sink(
            "capture", SinkSettings(plugin="capture"), sink, conn, dead=True, since=None, stream=stream
        )
    )
    conn.close()
    assert (result.delivered, result.failed) == (2, 0)
    assert sink.ids == ["d1", "d2"]
    assert sink.attempts == 3  # d1 failed once, then passed
    assert sink.started
    assert sink.flushed
    assert sink.closed
    assert dead_letter_ids(state, "capture") == []
    assert stream.getvalue().endswith("replay capture: 2/2 (100%), 0 failed\n")
