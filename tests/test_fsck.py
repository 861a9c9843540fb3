"""`wahookd fsck [--repair]` on journals corrupted on purpose (SPEC §7, issue 12): a torn WAL,
a cursor past the end, events waiting on media that is settled or unreadable, lost
positions, dead letters and retries of sinks the configuration does not have."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from wahookd.journal import Journal

SECRET = "fsck-secret"
WAITING_ROW = (
    "INSERT INTO events (id, source, kind, received_at, dseq, body) VALUES (?, 'shop', 'message', 0, NULL, ?)"
)
CONFIG = f"""
[sources.shop]
provider = "wasender"
secret = "{SECRET}"
"""


def body(message_id: str) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "timestamp": 1700000000,
            "data": {
                "key": {"id": message_id, "fromMe": False, "remoteJid": "15550003333@s.whatsapp.net"},
                "message": {"conversation": "hi"},
            },
        }
    ).encode()


def post(daemon: Any, message_id: str) -> None:
    request = urllib.request.Request(
        daemon.url + "/webhooks/shop",
        data=body(message_id),
        headers={"Content-Type": "application/json", "X-Webhook-Signature": SECRET},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def fsck(daemon: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "fsck", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sql(daemon: Any, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(daemon.state_dir / "journal.db", timeout=5, isolation_level=None)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def stopped(daemon_factory: Any) -> Any:
    """A daemon that took three events, delivered them to its default sink, and stopped."""
    daemon = daemon_factory(CONFIG).start()
    for n in range(3):
        post(daemon, f"FSCK{n}")
    deadline = time.monotonic() + 10
    while sql(daemon, "SELECT dseq FROM cursors WHERE sink = 'events'") != [(3,)]:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert daemon.stop() == 0
    return daemon


def test_a_sound_journal_is_ok_also_while_the_daemon_runs(stopped: Any) -> None:
    done = fsck(stopped)
    assert (done.returncode, done.stdout.strip()) == (0, "journal ok"), done.stdout + done.stderr
    stopped.start()
    done = fsck(stopped)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("journal ok")
    assert "its WAL file was not checked" in done.stdout
    refused = fsck(stopped, "--repair")
    assert refused.returncode == 1
    assert "stop it first" in refused.stderr


def test_a_torn_wal_is_found_and_repaired(tmp_path: Path, stopped: Any) -> None:
    # A crash while writing: copy the files while a writer holds an un-checkpointed WAL,
    # then cut the WAL in the middle of its last frame.
    conn = sqlite3.connect(stopped.state_dir / "journal.db", isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO meta VALUES ('filler', ?)", ("x" * 20000,))
    conn.execute("INSERT INTO meta VALUES ('more', ?)", ("y" * 20000,))
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("journal.db", "journal.db-wal"):
        shutil.copy2(stopped.state_dir / name, saved / name)
    conn.close()
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        (stopped.state_dir / name).unlink(missing_ok=True)
    shutil.copy2(saved / "journal.db", stopped.state_dir / "journal.db")
    wal = saved.joinpath("journal.db-wal").read_bytes()
    assert len(wal) > 10000
    (stopped.state_dir / "journal.db-wal").write_bytes(wal[:-3000])

    done = fsck(stopped)
    assert done.returncode == 1
    assert "journal.db-wal: the last write was cut short" in done.stdout
    assert "frames after its last commit" in done.stdout or "cut short (" in done.stdout
    repaired = fsck(stopped, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: WAL checkpointed" in repaired.stdout
    again = fsck(stopped)
    assert (again.returncode, again.stdout.strip()) == (0, "journal ok")
    assert sql(stopped, "SELECT count(*) FROM events") == [(3,)]  # the committed events survive
    assert sql(stopped, "SELECT value FROM meta WHERE key = 'filler'")  # and the whole commit


def test_a_cursor_past_the_end_is_set_back(stopped: Any) -> None:
    sql(stopped, "UPDATE cursors SET dseq = 1000 WHERE sink = 'events'")
    done = fsck(stopped)
    assert done.returncode == 1
    assert "cursor: sink events is at position 1000, past the journal's end 3" in done.stdout
    repaired = fsck(stopped, "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "repaired: sink events set back to 3" in repaired.stdout
    assert sql(stopped, "SELECT dseq FROM cursors WHERE sink = 'events'") == [(3,)]
    # The next event is numbered past it and delivered.
    stopped.start()
    post(stopped, "AFTER")
    deadline = time.monotonic() + 10
    while sql(stopped, "SELECT dseq FROM cursors WHERE sink = 'events'") != [(4,)]:
        assert time.monotonic() < deadline, stopped.log()
        time.sleep(0.05)


def test_events_waiting_on_settled_or_unreadable_media_are_released_or_kept_aside(stopped: Any) -> None:
    [[text]] = sql(stopped, "SELECT body FROM events WHERE dseq = 1")
    settled = json.loads(text)
    settled.update(
        id="shop:SETTLED", media={"mime_type": "image/jpeg", "stored": {"bucket": None, "key": "k"}}
    )
    sql(
        stopped,
        WAITING_ROW,
        "shop:SETTLED",
        json.dumps(settled),
    )
    sql(
        stopped,
        WAITING_ROW,
        "shop:TORN",
        '{"id": "shop:TORN", "media": {"mime',
    )
    done = fsck(stopped)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any("waits for media that was stored already" in line for line in lines), done.stdout
    assert any("its stored body is not a JSON object" in line for line in lines), done.stdout
    repaired = fsck(stopped, "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "released to the sinks at position 4" in repaired.stdout
    assert sql(stopped, "SELECT dseq FROM events WHERE id = 'shop:SETTLED'") == [(4,)]
    assert sql(stopped, "SELECT count(*) FROM events WHERE id = 'shop:TORN'") == [(0,)]
    [kept] = stopped.state_dir.glob("fsck-quarantine-*.jsonl")
    assert json.loads(kept.read_text())["body"] == '{"id": "shop:TORN", "media": {"mime'


def test_dead_letters_and_retries_of_unknown_sinks_are_kept_in_a_file_and_removed(stopped: Any) -> None:
    [[text]] = sql(stopped, "SELECT body FROM events WHERE dseq = 2")
    for sink in ("old_crm", "events"):
        sql(
            stopped,
            "INSERT INTO dead_letters (sink, seq, event_id, attempts, error, failed_at, body) "
            "VALUES (?, 2, 'shop:FSCK1', 5, 'HTTP 500', 0, ?)",
            sink,
            text,
        )
    sql(stopped, "INSERT INTO retries VALUES ('old_crm', 'shop:FSCK1', 2, 0, 'HTTP 500')")
    done = fsck(stopped)
    assert done.returncode == 1
    assert "dead letters: 1 of sink old_crm, which the configuration does not have" in done.stdout
    assert "retries: 1 rows of sink old_crm, which the configuration does not have" in done.stdout
    assert "sink events" not in done.stdout  # a configured sink's dead letters are no problem
    repaired = fsck(stopped, "--repair")
    assert repaired.returncode == 0, repaired.stdout
    [kept] = stopped.state_dir.glob("dead-letters-old_crm-*.jsonl")
    row = json.loads(kept.read_text())
    assert (row["event_id"], row["error"], json.loads(row["body"])["id"]) == (
        "shop:FSCK1",
        "HTTP 500",
        "shop:FSCK1",
    )
    assert sql(stopped, "SELECT sink FROM dead_letters") == [("events",)]
    assert sql(stopped, "SELECT count(*) FROM retries") == [(0,)]


def test_positions_lost_before_every_sink_had_them_are_reported_not_repairable(stopped: Any) -> None:
    sql(stopped, "UPDATE cursors SET dseq = 1 WHERE sink = 'events'")
    sql(stopped, "DELETE FROM events WHERE dseq = 2")  # an operator's hand
    done = fsck(stopped)
    assert done.returncode == 1
    assert "positions: 2 missing above sink events's cursor 1: 1 events lost" in done.stdout
    repaired = fsck(stopped, "--repair")
    assert repaired.returncode == 1
    assert "not repaired: nothing can bring them back" in repaired.stdout


def test_a_new_event_is_numbered_past_every_cursor_after_pruning_emptied_the_journal(tmp_path: Path) -> None:
    """Pruning may delete the last events: the next ones must not be numbered at or below a
    sink's cursor, or that sink would skip them for good."""
    from wahookd.events import Event

    async def scenario() -> tuple[int, int]:
        journal = Journal(tmp_path, durable=False)
        journal.open()
        events = [
            Event(id=f"s:{n}", source="s", provider="wasender", kind="message", event="e", raw={})
            for n in range(3)
        ]
        await journal.commit(events)
        await journal.save_cursor("sink", 3)
        await journal.prune(["sink"], time.time() + 10)
        await journal.close()
        again = Journal(tmp_path, durable=False)
        again.open()
        await again.commit(
            [Event(id="s:new", source="s", provider="wasender", kind="message", event="e", raw={})]
        )
        [ready] = await again.read_ready(3, 10)
        await again.close()
        return ready.dseq, again.last_dseq

    dseq, last = asyncio.run(scenario())
    assert (dseq, last) == (4, 4)
