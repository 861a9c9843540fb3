"""The daemon's memory is bounded by bytes, not by a count of events: large events do not pile up."""

from __future__ import annotations

import json
import platform
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import wasender_headers

from wahookd.daemon import map_large_blocks

SECRET = "memory-test-secret"
EVENT_BYTES = 1_400_000
WARM_UP = 20
EVENTS = 150  # 210 MB of events: 1024 of them in a cache would be GBs


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def large_body(number: int) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "timestamp": 1700000000,
            "data": {
                "messages": {
                    "key": {
                        "id": f"BIG{number:06d}",
                        "fromMe": False,
                        "remoteJid": "15550001111@s.whatsapp.net",
                    },
                    "pushName": "Big",
                    "messageTimestamp": 1700000000,
                    "message": {"conversation": "x" * EVENT_BYTES},
                }
            },
        }
    ).encode()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers=wasender_headers(SECRET))
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


def lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as file:
        return sum(1 for _ in file)


def test_large_events_keep_the_rss_bounded(daemon_factory, tmp_path: Path) -> None:
    """300 signed events of 1.4 MB once took the RSS from 46 to 881 MB: a recent-events cache
    kept 1,024 whole events, and a sink's batch read 500 of them at once. Later, with glibc's
    dynamic mmap threshold, bodies fragmented the threads' heaps: 103-136 MB settled, peaks
    of 139-171 MB, one CI run over the bound; the daemon now fixes the threshold."""
    sink_path = tmp_path / "events.jsonl"
    daemon = daemon_factory(
        f"""
        [ratelimit]
        rate = 100000
        burst = 100000

        [sources.shop]
        provider = "wasender"
        secret = "{SECRET}"

        [sinks.archive]
        plugin = "file"
        path = "{sink_path}"
        max_bytes = 0
        """
    ).start()
    assert daemon.proc is not None
    url = daemon.url + "/webhooks/shop"
    body = large_body(0)
    for number in range(WARM_UP):  # allocator arenas, caches and buffers reach their size
        assert post(url, body.replace(b"BIG000000", f"BIG{number:06d}".encode())) == 200
    settled = rss_mb(daemon.proc.pid)
    peak = settled
    for number in range(WARM_UP, WARM_UP + EVENTS):
        assert post(url, body.replace(b"BIG000000", f"BIG{number:06d}".encode())) == 200
        peak = max(peak, rss_mb(daemon.proc.pid))
    deadline = time.monotonic() + 60
    while lines(sink_path) < WARM_UP + EVENTS and time.monotonic() < deadline:
        time.sleep(0.1)
        peak = max(peak, rss_mb(daemon.proc.pid))
    assert lines(sink_path) == WARM_UP + EVENTS
    # A few events in flight (request, journal, sink) are a few times 1.4 MB; the caches'
    # budgets (4 MiB of recent events, 8 MiB per sink read) a few more.
    assert peak - settled < 60, f"RSS went from {settled:.0f} to {peak:.0f} MB"
    assert daemon.stop() == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_blocks_are_mapped_on_glibc() -> None:
    assert map_large_blocks()
