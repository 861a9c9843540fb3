"""What /metrics shows a monitoring system, scraped from the daemon as a real process:
process collectors, no `_created` series, readiness, dedupe capacity, source staleness and
each provider's session state from its own session events."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import DaemonProcess, wasender_body, wasender_headers
from tests.test_daemon_process import get, post
from tests.test_service import metric_value, wait_until

CONFIG = """
[ratelimit]
rate = 100000
burst = 100000

[dedupe]
capacity = 4321

[sources.shop]
provider = "wasender"
secret = "s3cret"
stale_after = 1

[sources.waha]
provider = "waha"
verify = "none"

[sources.evo]
provider = "evolution"
verify = "none"
"""


@pytest.fixture
def daemon(daemon_factory: Any) -> DaemonProcess:
    return daemon_factory(CONFIG).start()


def exposition(daemon: DaemonProcess) -> str:
    status, body = get(daemon.port, "/metrics")
    assert status == 200
    return body.decode()


def test_process_collectors_and_no_created_series(daemon: DaemonProcess) -> None:
    text = exposition(daemon)
    assert "process_resident_memory_bytes " in text
    assert "process_cpu_seconds_total " in text
    assert "process_open_fds " in text
    assert "_created" not in text


def test_ready_and_dedupe_capacity(daemon: DaemonProcess) -> None:
    assert metric_value(daemon.port, "wahookd_ready") == 1
    assert metric_value(daemon.port, "wahookd_dedupe_capacity") == 4321


def test_a_source_goes_stale_and_fresh_again(daemon: DaemonProcess) -> None:
    labels = '{source="shop"}'
    assert wait_until(lambda: metric_value(daemon.port, "wahookd_source_stale", labels) == 1, 5)
    before = time.time()
    assert post(daemon.port, "/webhooks/shop", wasender_body("S1"), wasender_headers("s3cret"))[0] == 200
    assert metric_value(daemon.port, "wahookd_source_stale", labels) == 0
    assert metric_value(daemon.port, "wahookd_source_last_event_timestamp_seconds", labels) >= before - 1
    # Sources without stale_after have no staleness series.
    assert 'wahookd_source_stale{source="waha"}' not in exposition(daemon)


def wasender_session(status: str) -> bytes:
    return json.dumps(
        {"event": "session.status", "timestamp": time.time(), "data": {"status": status}}
    ).encode()


def waha_session(status: str) -> bytes:
    return json.dumps(
        {"event": "session.status", "session": "default", "payload": {"status": status}, "engine": "NOWEB"}
    ).encode()


def evolution_connection(state: str) -> bytes:
    return json.dumps(
        {
            "event": "connection.update",
            "instance": "inst1",
            "data": {"instance": "inst1", "state": state, "statusReason": time.time_ns()},
        }
    ).encode()


@pytest.mark.parametrize(
    ("source", "body", "headers"),
    [
        ("shop", wasender_session, wasender_headers("s3cret")),
        ("waha", waha_session, {"Content-Type": "application/json"}),
        ("evo", evolution_connection, {"Content-Type": "application/json"}),
    ],
)
def test_session_up_follows_the_providers_own_session_events(
    daemon: DaemonProcess, source: str, body: Any, headers: dict[str, str]
) -> None:
    labels = f'{{source="{source}"}}'
    assert f"wahookd_session_up{labels}" not in exposition(daemon)  # absent until one arrives
    up, down = {
        "shop": ("connected", "disconnected"),
        "waha": ("WORKING", "FAILED"),
        "evo": ("open", "close"),
    }[source]
    assert post(daemon.port, f"/webhooks/{source}", body(up), headers)[0] == 200
    assert metric_value(daemon.port, "wahookd_session_up", labels) == 1
    assert post(daemon.port, f"/webhooks/{source}", body(down), headers)[0] == 200
    assert f"wahookd_session_up{labels} 0.0" in exposition(daemon)


def test_the_dead_letter_gauge_moves_at_once_after_a_cli_replay(daemon_factory: Any, tmp_path: Any) -> None:
    import http.server
    import subprocess
    import sys
    import threading

    answer = {"status": 400}

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(answer["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        sink = f'\n[sinks.crm]\nplugin = "forward"\nurl = "{url}"\nsecret = "x"\n'
        daemon: DaemonProcess = daemon_factory(CONFIG + sink).start()
        assert post(daemon.port, "/webhooks/shop", wasender_body("D1"), wasender_headers("s3cret"))[0] == 200
        labels = '{sink="crm"}'
        assert wait_until(lambda: metric_value(daemon.port, "wahookd_dead_letters", labels) == 1, 10)
        answer["status"] = 200
        replay = subprocess.run(
            [
                sys.executable,
                "-m",
                "wahookd.cli",
                "replay",
                "--dead",
                "--sink",
                "crm",
                "--config",
                str(daemon.config_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert replay.returncode == 0, replay.stderr
        replayed_at = time.monotonic()
        assert wait_until(lambda: metric_value(daemon.port, "wahookd_dead_letters", labels) == 0, 5)
        assert time.monotonic() - replayed_at < 3
    finally:
        server.shutdown()


def test_oldest_pending_grows_for_a_failing_sink_and_is_0_for_a_caught_up_one(
    daemon_factory: Any, tmp_path: Any
) -> None:
    from tests.conftest import free_port

    out = tmp_path / "events.jsonl"
    sinks = (
        f'\n[sinks.archive]\nplugin = "file"\npath = "{out}"\n'
        f'\n[sinks.crm]\nplugin = "forward"\nurl = "http://127.0.0.1:{free_port()}/"\nsecret = "x"\n'
    )
    daemon: DaemonProcess = daemon_factory(CONFIG + sinks).start()
    assert post(daemon.port, "/webhooks/shop", wasender_body("O1"), wasender_headers("s3cret"))[0] == 200
    assert wait_until(
        lambda: metric_value(daemon.port, "wahookd_sink_oldest_pending_seconds", '{sink="crm"}') > 1, 10
    )
    assert metric_value(daemon.port, "wahookd_sink_oldest_pending_seconds", '{sink="archive"}') == 0
    assert metric_value(daemon.port, "wahookd_sink_backlog", '{sink="crm"}') == 1
