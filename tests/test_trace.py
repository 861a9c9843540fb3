"""`wahookd trace`, as an operator runs it beside the running daemon: "where is my message?"
answered by event id, log hash, provider message id or contact, per sink."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, free_port, wasender_body, wasender_headers
from tests.test_daemon_process import post, wait_for_lines
from tests.test_service import wait_until

SECRET = "s3cret"


def config(out: Path) -> str:
    return f"""
[ratelimit]
rate = 100000
burst = 100000

[sources.shop]
provider = "wasender"
secret = "{SECRET}"

[sinks.archive]
plugin = "file"
path = "{out}"

[sinks.crm]
plugin = "forward"
url = "http://127.0.0.1:{free_port()}/"
secret = "x"
backoff_initial = 30

[sinks.statuses]
plugin = "file"
path = "{out}.statuses"
kinds = ["status"]
"""


def trace(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "trace", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def daemon(daemon_factory: Any, tmp_path: Path) -> DaemonProcess:
    out = tmp_path / "events.jsonl"
    running: DaemonProcess = daemon_factory(config(out)).start()
    assert (
        post(running.port, "/webhooks/shop", wasender_body("TRACE1", "where am I"), wasender_headers(SECRET))[
            0
        ]
        == 200
    )
    assert wait_for_lines(out, 1)
    assert wait_until(lambda: "sink_delivery_failed" in running.log())
    time.sleep(0.3)  # the retry note is written right after the failure is logged
    return running


def test_trace_by_event_id_shows_every_sink_while_the_daemon_runs(daemon: DaemonProcess) -> None:
    result = trace(daemon, "shop:TRACE1", "--json")
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)["events"]
    assert item["event"]["text"] == "where am I"
    assert "raw" not in item["event"]
    sinks = item["sinks"]
    assert sinks["archive"]["status"] == "delivered"
    assert sinks["archive"]["delivered_at"].endswith("Z")
    assert sinks["crm"]["status"] == "retrying"
    assert sinks["crm"]["attempts"] == 1
    assert sinks["crm"]["last_error"]
    assert sinks["crm"]["next_try"] is not None
    assert sinks["statuses"]["status"] == "filtered"
    assert trace(daemon, "shop:TRACE1", "--json", "--raw").stdout.count('"raw"') == 1


@pytest.mark.parametrize("query", ["TRACE1", "1234567890", "+1 234-567-890", "1234567890@s.whatsapp.net"])
def test_trace_by_message_id_or_contact(daemon: DaemonProcess, query: str) -> None:
    result = trace(daemon, query, "--json")
    assert result.returncode == 0, result.stderr
    assert [item["event"]["id"] for item in json.loads(result.stdout)["events"]] == ["shop:TRACE1"]


def test_trace_by_the_hash_the_logs_name_it_by(daemon: DaemonProcess) -> None:
    failed = next(json.loads(line) for line in daemon.log().splitlines() if "sink_delivery_failed" in line)
    result = trace(daemon, failed["event_ref"])
    assert result.returncode == 0, result.stderr
    assert "shop:TRACE1" in result.stdout
    assert "retrying: attempt 1" in result.stdout
    assert "delivered at" in result.stdout
    assert "filtered out" in result.stdout


def test_a_message_never_seen_says_so_and_looks_in_the_rejected_store(daemon: DaemonProcess) -> None:
    unknown = trace(daemon, "NEVER-SEEN-42")
    assert unknown.returncode == 1
    assert "never seen" in unknown.stdout
    assert "no rejected body" in unknown.stdout
    broken = b'{"event": "messages.upsert", "data": {"key": {"id": "BROKEN-7"}'  # cut off
    assert post(daemon.port, "/webhooks/shop", broken, wasender_headers(SECRET))[0] == 400
    found = trace(daemon, "BROKEN-7")
    assert found.returncode == 1
    assert "the rejected store holds bodies that mention it" in found.stdout
