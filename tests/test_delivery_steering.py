"""Delivery a team can steer, with the daemon as a process and a real HTTP receiver: chat
order under concurrency, the circuit (`pause_after`), `wahookd pause`/`resume`, `rate`,
`redact` and the `events` filter."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DaemonProcess, wasender_headers
from tests.test_daemon_process import post
from tests.test_service import metric_value, wait_until

SECRET = "s3cret"
SOURCES = f"""
[ratelimit]
rate = 100000
burst = 100000

[sources.shop]
provider = "wasender"
secret = "{SECRET}"
"""


def message(message_id: str, phone: str, text: str = "hi") -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "timestamp": 1700000000,
            "data": {
                "messages": {
                    "key": {"id": message_id, "fromMe": False, "remoteJid": f"{phone}@s.whatsapp.net"},
                    "pushName": "Test",
                    "messageTimestamp": 1700000000,
                    "message": {"conversation": text},
                }
            },
        }
    ).encode()


class Receiver:
    """A forward target on loopback: records what arrives; `failing(event)` decides 503s."""

    def __init__(self) -> None:
        self.received: list[tuple[float, str, dict[str, Any]]] = []  # (when, path, event)
        self.lock = threading.Lock()
        self.failing = lambda path, event: False
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fail = receiver.failing(self.path, event)
                if not fail:
                    with receiver.lock:
                        receiver.received.append((time.monotonic(), self.path, event))
                self.send_response(503 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [event for _, where, event in self.received if path is None or where == path]

    def times(self) -> list[float]:
        with self.lock:
            return [when for when, _, _ in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    target = Receiver()
    yield target
    target.server.shutdown()


def forward(name: str, url: str, extra: str = "") -> str:
    return f'\n[sinks.{name}]\nplugin = "forward"\nurl = "{url}"\nsecret = "x"\n{extra}\n'


def send(daemon: DaemonProcess, message_id: str, phone: str, text: str = "hi") -> None:
    status, body = post(
        daemon.port, "/webhooks/shop", message(message_id, phone, text), wasender_headers(SECRET)
    )
    assert status == 200, body


def test_chat_order_holds_under_concurrency_while_one_chat_fails_and_recovers(
    daemon_factory: Any, receiver: Receiver
) -> None:
    down_until = time.monotonic() + 3.0
    receiver.failing = lambda path, event: event["chat_id"] == "111" and time.monotonic() < down_until
    extra = 'concurrency = 16\nordering = "chat"\nbackoff_initial = 0.2\nbackoff_max = 0.5'
    daemon: DaemonProcess = daemon_factory(SOURCES + forward("crm", receiver.url(), extra)).start()
    chats = ["111", "222", "333", "444"]
    for n in range(40):
        send(daemon, f"M{n:03d}", chats[n % 4])
    # The other chats are not held back by the failing one.
    assert wait_until(lambda: len(receiver.events()) >= 30, 10)
    assert time.monotonic() < down_until
    assert not any(event["chat_id"] == "111" for event in receiver.events())
    assert wait_until(lambda: len(receiver.events()) == 40, 20)
    for chat in chats:
        ids = [event["message_id"] for event in receiver.events() if event["chat_id"] == chat]
        assert ids == sorted(ids), f"chat {chat} out of order: {ids}"
        assert len(ids) == 10
    assert metric_value(daemon.port, "wahookd_dead_letters", '{sink="crm"}') == 0


def test_the_circuit_opens_after_pause_after_failures_and_closes_on_recovery(
    daemon_factory: Any, receiver: Receiver
) -> None:
    down = {"on": True}
    receiver.failing = lambda path, event: down["on"]
    # max_attempts 3 would dead-letter within a second without the circuit: paused, it waits.
    extra = "pause_after = 2\nmax_attempts = 3\nbackoff_initial = 0.1\nbackoff_max = 1"
    daemon: DaemonProcess = daemon_factory(SOURCES + forward("crm", receiver.url(), extra)).start()
    for n in range(5):
        send(daemon, f"C{n}", "5550001")
    assert wait_until(lambda: metric_value(daemon.port, "wahookd_sink_paused", '{sink="crm"}') == 1, 10)
    time.sleep(2.5)  # probes only, one per backoff_max
    assert metric_value(daemon.port, "wahookd_dead_letters", '{sink="crm"}') == 0
    down["on"] = False
    assert wait_until(lambda: len(receiver.events()) == 5, 10)
    assert metric_value(daemon.port, "wahookd_sink_paused", '{sink="crm"}') == 0
    assert metric_value(daemon.port, "wahookd_dead_letters", '{sink="crm"}') == 0
    assert '"by":"circuit"' in daemon.log().replace(" ", "")


def cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pause_and_resume_from_the_cli_under_load(daemon_factory: Any, receiver: Receiver) -> None:
    daemon: DaemonProcess = daemon_factory(
        SOURCES + forward("crm", receiver.url(), "concurrency = 4")
    ).start()
    stop = threading.Event()
    sent: list[str] = []

    def load() -> None:
        n = 0
        while not stop.is_set():
            send(daemon, f"L{n:05d}", "5550002")
            sent.append(f"L{n:05d}")
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        assert wait_until(lambda: len(receiver.events()) > 20, 10)
        paused = cli(daemon, "pause", "crm")
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout == "crm paused\n"
        time.sleep(1.0)  # obeyed within a second
        frozen = len(receiver.events())
        time.sleep(1.0)
        assert len(receiver.events()) == frozen
        assert metric_value(daemon.port, "wahookd_sink_paused", '{sink="crm"}') == 1
        status = json.loads(cli(daemon, "status", "--json").stdout)
        assert [sink["paused"] for sink in status["sinks"] if sink["name"] == "crm"] == [True]
        assert cli(daemon, "resume", "crm").stdout == "crm resumed\n"
    finally:
        stop.set()
        thread.join(15)
    assert wait_until(lambda: len(receiver.events()) == len(sent), 15)
    assert sorted(event["message_id"] for event in receiver.events()) == sorted(sent)
    assert metric_value(daemon.port, "wahookd_sink_paused", '{sink="crm"}') == 0
    unknown = cli(daemon, "pause", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("wahookd: error: no sink 'nope'")


def test_rate_20_holds_within_10_percent(daemon_factory: Any, receiver: Receiver) -> None:
    daemon: DaemonProcess = daemon_factory(
        SOURCES + forward("crm", receiver.url(), "concurrency = 8\nrate = 20")
    ).start()
    for n in range(60):
        send(daemon, f"R{n:03d}", "5550003")
    assert wait_until(lambda: len(receiver.events()) == 60, 20)
    times = receiver.times()
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    overall = (len(times) - 1) / (times[-1] - times[0])
    print(f"rate = 20: busiest second {busiest}, overall {overall:.1f}/s")
    assert busiest <= 22
    assert 18 <= overall <= 22


def test_redacted_fields_never_reach_the_sink_and_hashes_still_join(
    daemon_factory: Any, receiver: Receiver
) -> None:
    redact = 'redact = ["text", "raw", "sender_name", "from", "chat_id"]'
    config = (
        SOURCES + forward("crm", receiver.url("/crm"), redact) + forward("bi", receiver.url("/bi"), redact)
    )
    daemon: DaemonProcess = daemon_factory(config).start()
    send(daemon, "X1", "4915100000001", "secret words")
    send(daemon, "X2", "4915100000001", "more secret words")
    send(daemon, "X3", "4915100000002", "other")
    assert wait_until(lambda: len(receiver.events()) == 6, 10)
    crm, bi = receiver.events("/crm"), receiver.events("/bi")
    for event in crm + bi:
        assert event["text"] is None
        assert event["raw"] is None
        assert event["sender_name"] is None
        assert event["from"].startswith("redacted:")
        assert "49151" not in json.dumps(event)
    by_id = {event["message_id"]: event for event in crm}
    assert by_id["X1"]["from"] == by_id["X2"]["from"] != by_id["X3"]["from"]  # joinable
    assert by_id["X1"]["chat_id"] == by_id["X2"]["chat_id"]
    assert {event["from"] for event in bi}.isdisjoint({event["from"] for event in crm})  # per sink


def test_the_events_filter(daemon_factory: Any, receiver: Receiver) -> None:
    extra = 'events = ["session.status"]'
    daemon: DaemonProcess = daemon_factory(SOURCES + forward("ops", receiver.url(), extra)).start()
    send(daemon, "E1", "5550004")
    session = json.dumps(
        {"event": "session.status", "timestamp": 1, "data": {"status": "connected"}}
    ).encode()
    assert post(daemon.port, "/webhooks/shop", session, wasender_headers(SECRET))[0] == 200
    assert wait_until(lambda: len(receiver.events()) == 1, 10)
    time.sleep(0.5)
    assert [event["event"] for event in receiver.events()] == ["session.status"]
