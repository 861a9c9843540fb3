"""The daemon as a real process: delivery to the file sink, restarts, SIGKILL, SIGTERM, outages."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conftest import FIXTURES, DaemonProcess, meta_headers, wasender_body, wasender_headers

SECRET = "s3cret"
META_SECRET = "meta-secret"
CONFIG = f"""
[ratelimit]
rate = 100000
burst = 100000

[sources.shop]
provider = "wasender"
secret = "{SECRET}"

[sources.fb]
provider = "meta"
secret = "{META_SECRET}"
"""


def sink_config(path: Path) -> str:
    return f'\n[sinks.archive]\nplugin = "file"\npath = "{path}"\n'


def post(
    port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 10
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def sink_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_for_lines(path: Path, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    lines = sink_lines(path)
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = sink_lines(path)
    return lines


def test_signed_fixtures_reach_the_file_sink_as_events(daemon_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(CONFIG + sink_config(out)).start()
    body = (FIXTURES / "wasender" / "messages-received-text.json").read_bytes()
    assert post(daemon.port, "/webhooks/shop", body, wasender_headers(SECRET))[0] == 200
    meta = (FIXTURES / "meta" / "status-failed.json").read_bytes()
    assert post(daemon.port, "/webhooks/fb", meta, meta_headers(META_SECRET, meta))[0] == 200
    assert post(daemon.port, "/webhooks/fb", meta, {"Content-Type": "application/json"})[0] == 401
    assert post(daemon.port, "/webhooks/nope", meta, {"Content-Type": "application/json"})[0] == 404
    first, second = wait_for_lines(out, 2)
    assert first["kind"] == "message"
    assert first["message_id"] == "3EB0X123456789"
    assert first["from"] == "1234567890"
    assert first["text"] == "Hello, I have a question"
    assert first["timestamp"] == "2021-10-05T17:59:49Z"
    assert first["raw"]["key"]["id"] == "3EB0X123456789"
    assert second["kind"] == "status"
    assert second["status"] == "failed"
    assert str(second["error"]["code"]) == "130472"
    assert set(first) >= {
        "id",
        "source",
        "provider",
        "kind",
        "event",
        "message_id",
        "chat_id",
        "from",
        "to",
        "from_me",
        "sender_name",
        "type",
        "text",
        "media",
        "status",
        "timestamp",
        "received_at",
        "raw",
    }
    assert daemon.stop() == 0


def test_a_redelivered_webhook_creates_nothing_new_even_after_a_restart(
    daemon_factory: Any, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(CONFIG + sink_config(out)).start()
    body = wasender_body("REPEAT1")
    assert json.loads(post(daemon.port, "/webhooks/shop", body, wasender_headers(SECRET))[1]) == {
        "accepted": 1,
        "duplicates": 0,
    }
    assert json.loads(post(daemon.port, "/webhooks/shop", body, wasender_headers(SECRET))[1]) == {
        "accepted": 0,
        "duplicates": 1,
    }
    assert daemon.stop() == 0
    daemon.start()
    assert json.loads(post(daemon.port, "/webhooks/shop", body, wasender_headers(SECRET))[1]) == {
        "accepted": 0,
        "duplicates": 1,
    }
    time.sleep(0.5)
    assert [e["message_id"] for e in sink_lines(out)] == ["REPEAT1"]
    assert daemon.stop() == 0


def hammer(port: int, prefix: str, count: int, stop: threading.Event | None = None) -> list[str]:
    """Post `count` distinct webhooks from 16 threads; returns the ids that got a 200."""
    accepted: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        if stop is not None and stop.is_set():
            return
        message_id = f"{prefix}{i}"
        try:
            status, _ = post(
                port, "/webhooks/shop", wasender_body(message_id), wasender_headers(SECRET), timeout=5
            )
        except (OSError, http.client.HTTPException):
            return  # the daemon died under us: no 200, no promise
        if status == 200:
            with lock:
                accepted.append(message_id)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    return accepted


def killed_under_load(daemon: DaemonProcess, prefix: str) -> list[str]:
    """SIGKILL `daemon` a second into a load of distinct webhooks; the ids answered 200."""
    stop = threading.Event()
    killer = threading.Timer(1.0, lambda: (daemon.kill(), stop.set()))
    killer.start()
    accepted = hammer(daemon.port, prefix, 20_000, stop)
    killer.join()
    assert 50 < len(accepted) < 20_000, "the kill must land in the middle of the load"
    return accepted


def test_sigkill_under_load_loses_no_accepted_event_and_doubles_none(
    daemon_factory: Any, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(CONFIG + sink_config(out)).start()
    accepted = killed_under_load(daemon, "KILL")
    daemon.start()
    lines = wait_for_lines(out, len(accepted), timeout=30)
    ids = [e["message_id"] for e in lines]
    assert set(accepted) <= set(ids)  # every 200 survived
    assert len(ids) == len(set(ids))  # and none is there twice
    assert daemon.stop() == 0


def test_after_sigkill_under_load_every_accepted_webhook_is_still_a_duplicate(
    daemon_factory: Any, tmp_path: Path
) -> None:
    """New dedupe keys reach the index in bulk; until then their events' rows hold them. A
    SIGKILL in between forgets none: every webhook answered 200 before the kill, sent again
    after the restart, is a duplicate, and the sink has each event once."""
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(CONFIG + sink_config(out)).start()
    accepted = killed_under_load(daemon, "AGAIN")
    with sqlite3.connect(daemon.state_dir / "journal.db") as conn:
        in_index = conn.execute("SELECT count(*) FROM dedupe").fetchone()[0]
    assert in_index < len(accepted)  # the kill left keys only in their events' rows
    daemon.start()
    again = [
        json.loads(post(daemon.port, "/webhooks/shop", wasender_body(i), wasender_headers(SECRET))[1])
        for i in accepted
    ]
    assert all(answer == {"accepted": 0, "duplicates": 1} for answer in again)
    lines = wait_for_lines(out, len(accepted), timeout=30)
    ids = [e["message_id"] for e in lines]
    assert set(accepted) <= set(ids)
    assert len(ids) == len(set(ids))
    assert daemon.stop() == 0
    assert '"event":"journal_dedupe_recovered"' in daemon.log()
    with sqlite3.connect(daemon.state_dir / "journal.db") as conn:  # a clean stop merged them
        assert conn.execute("SELECT count(*) FROM dedupe").fetchone()[0] >= len(set(ids))


def test_sigterm_under_load_exits_zero_and_loses_nothing(daemon_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(CONFIG + sink_config(out)).start()
    threading.Timer(1.0, lambda: daemon.signal(signal.SIGTERM)).start()
    accepted = hammer(daemon.port, "TERM", 20_000)
    assert daemon.wait(30) == 0
    assert 50 < len(accepted) < 20_000
    ids = [e["message_id"] for e in sink_lines(out)]
    assert set(accepted) <= set(ids)  # drained to the sink before exiting
    assert len(ids) == len(set(ids))
    assert '"event":"stopped"' in daemon.log()


def test_a_locked_journal_answers_503_and_recovers(daemon_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    daemon: DaemonProcess = daemon_factory(CONFIG + sink_config(out)).start()
    assert post(daemon.port, "/webhooks/shop", wasender_body("BEFORE"), wasender_headers(SECRET))[0] == 200
    # Another process holds the write lock past the daemon's busy timeout: writes fail.
    blocker = sqlite3.connect(daemon.state_dir / "journal.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    status, body = post(
        daemon.port, "/webhooks/shop", wasender_body("DURING"), wasender_headers(SECRET), timeout=20
    )
    assert (status, json.loads(body)) == (503, {"error": "cannot store event"})
    assert get(daemon.port, "/readyz")[0] == 503
    blocker.execute("ROLLBACK")
    blocker.close()
    assert get(daemon.port, "/readyz")[0] == 200
    assert post(daemon.port, "/webhooks/shop", wasender_body("DURING"), wasender_headers(SECRET))[0] == 200
    ids = [e["message_id"] for e in wait_for_lines(out, 2)]
    assert ids == ["BEFORE", "DURING"]
    assert daemon.stop() == 0


def test_systemd_is_told_ready_once_listening_and_stopping_on_sigterm(
    daemon_factory: Any, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(15)
    daemon: DaemonProcess = daemon_factory(CONFIG, env={"NOTIFY_SOCKET": str(path)})
    daemon.start()
    assert listener.recv(100) == b"READY=1"
    assert get(daemon.port, "/healthz")[0] == 200
    daemon.signal(signal.SIGTERM)
    assert listener.recv(100) == b"STOPPING=1"
    assert daemon.wait() == 0
    listener.close()


def test_embedded_defaults_run_and_say_how_to_add_a_source(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "WAHOOKD_SERVER__LISTEN": f"127.0.0.1:{port}", "WAHOOKD_CONFIG": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wahookd.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        status, _ = post(port, "/webhooks/shop", wasender_body("X"), wasender_headers("x"))
        assert status == 404  # nothing is accepted unverified by default
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "no_sources" in output
    assert "[sources.shop]" in output
    assert (tmp_path / "wahookd-data" / "journal.db").exists()


def test_the_same_message_id_on_two_sources_reaches_the_sink_twice(
    daemon_factory: Any, tmp_path: Path
) -> None:
    # Two of a team's numbers messaging each other: both webhooks carry the same key.id.
    out = tmp_path / "events.jsonl"
    config = CONFIG + f'\n[sources.other]\nprovider = "wasender"\nsecret = "{SECRET}"\n' + sink_config(out)
    daemon: DaemonProcess = daemon_factory(config).start()
    body = wasender_body("SHARED1")
    for source in ("shop", "other"):
        status, answer = post(daemon.port, f"/webhooks/{source}", body, wasender_headers(SECRET))
        assert (status, json.loads(answer)) == (200, {"accepted": 1, "duplicates": 0})
    lines = wait_for_lines(out, 2)
    assert sorted(e["id"] for e in lines) == ["other:SHARED1", "shop:SHARED1"]
    assert {e["message_id"] for e in lines} == {"SHARED1"}
    assert daemon.stop() == 0
