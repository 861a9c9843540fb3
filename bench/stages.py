"""Per-stage CPU of one webhook, in-process: where wahookd's microseconds go.

Each stage of the request path runs on its own, many times, with the same ~1.5 KB signed
Wasender webhook that bench/run.py's wrk script sends, and its CPU time per request is
printed (`time.thread_time_ns` of this thread, so the fsync wait is not counted as CPU):

- Tornado's HTTP/1 parsing of the request head, as its connection does it;
- the rate limit, the source lookup, the signature check, parse + normalize;
- the answer: the JSON reply, the metric children, the access log line (to /dev/null);
- the journal: the writer's group commit (insert + dedupe index + WAL) per event, with
  fsync, measured in the writer thread's CPU time, and the WAL bytes written per event;
- the file sink: deliver + flush per event.

    .venv/bin/python bench/stages.py [--requests 20000] [--batch 50]

The stages do not add up to a request under load: the loop's own work (epoll, the
self-pipe wake-ups of cross-thread hand-offs, Tornado's stream bookkeeping) is the rest,
measured as the difference to bench/run.py's CPU per request. Loopback only; writes only
in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tornado import httputil  # noqa: E402

from wahookd.events import dump_json  # noqa: E402
from wahookd.plugins import collect, get_plugin_manager  # noqa: E402
from wahookd.providers import InboundRequest  # noqa: E402
from wahookd.ratelimit import RateLimiter  # noqa: E402
from wahookd.settings import SourceSettings  # noqa: E402

PAD = "lorem ipsum dolor sit amet " * 40


def body(n: int) -> bytes:
    return (
        '{"event":"messages.upsert","timestamp":1700000000,"data":{"messages":{"key":{"id":"'
        f'STAGE{n}","fromMe":false,"remoteJid":"1234567890@s.whatsapp.net"}},"pushName":"Bench",'
        f'"messageTimestamp":1700000000,"message":{{"conversation":"{PAD}"}}}}}}}}'
    ).encode()


HEAD = (
    b"POST /webhooks/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"X-Webhook-Signature: bench-secret\r\nContent-Length: 1480\r\n\r\n"
)


def per_call_us(function: Callable[[int], Any], count: int) -> float:
    started = time.thread_time_ns()
    for n in range(count):
        function(n)
    return (time.thread_time_ns() - started) / count / 1000


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50, help="events per group commit (load's typical)")
    args = parser.parse_args()
    count = args.requests
    rows: list[tuple[str, float]] = []

    provider = collect(get_plugin_manager(load_entrypoints=False)).providers["wasender"]
    source = SourceSettings(provider="wasender", secret="bench-secret")
    bodies = [body(n) for n in range(count)]

    def head(n: int) -> None:
        text = HEAD.decode("latin1")
        start, _, rest = text.partition("\r\n")
        httputil.parse_request_start_line(start)
        httputil.HTTPHeaders.parse(rest)

    rows.append(("HTTP head parse (Tornado)", per_call_us(head, count)))
    limiter = RateLimiter(1e9, 10**9, 100_000)
    rows.append(("rate limit take()", per_call_us(lambda n: limiter.take("127.0.0.1"), count)))
    headers = httputil.HTTPHeaders(
        {"Content-Type": "application/json", "X-Webhook-Signature": "bench-secret"}
    )

    def request(n: int) -> InboundRequest:
        return InboundRequest(
            method="POST",
            url="",
            headers=headers,
            body=bodies[n],
            content_type="application/json",
            query={},
            client_ip="127.0.0.1",
        )

    requests = [request(n) for n in range(count)]
    rows.append(("verify signature", per_call_us(lambda n: provider.verify(requests[n], source), count)))
    events = []
    rows.append(
        (
            "parse + normalize",
            per_call_us(lambda n: events.append(provider.parse(requests[n], "bench", source)), count),
        )
    )
    encoded = [dump_json(event[0].to_dict()) for event in events[:100]]
    rows.append(
        ("event to JSON (journal row)", per_call_us(lambda n: dump_json(events[n][0].to_dict()), count))
    )
    rows.append(("reply JSON", per_call_us(lambda n: dump_json({"accepted": 1, "duplicates": 0}), count)))

    from wahookd.metrics import make_metrics

    metrics = make_metrics()

    def count_metrics(n: int) -> None:
        metrics.child(metrics.events, "bench", "message").inc()
        metrics.child(metrics.http_requests, "bench", "200").inc()
        metrics.child(metrics.request_duration, "bench").observe(0.001)

    rows.append(("metrics (3 children)", per_call_us(count_metrics, count)))

    import structlog

    from wahookd import log as wahookd_log

    wahookd_log.configure_logging(json_output=True)
    sink = io.BufferedWriter(io.FileIO(os.open(os.devnull, os.O_WRONLY), "wb"), 64 * 1024)
    writer = wahookd_log.LineWriter(sink)
    structlog.configure(logger_factory=lambda *_: writer, cache_logger_on_first_use=True)
    request_log = structlog.get_logger("bench")
    rows.append(
        (
            "access log line",
            per_call_us(
                lambda n: request_log.info(
                    "request",
                    method="POST",
                    source="bench",
                    status=200,
                    client="127.0.0.1",
                    ms=1.0,
                    accepted=1,
                ),
                count,
            ),
        )
    )

    journal_rows, wal_per_event, commit_ms = asyncio.run(journal_stage(events, args.batch))
    rows.append((f"journal group commit, per event (writer thread, batches of {args.batch})", journal_rows))
    rows.append(("file sink deliver + flush, per event", asyncio.run(file_sink_stage(encoded, count))))

    print(f"{'stage':<66} {'us/request':>10}")
    for name, us in rows:
        print(f"{name:<66} {us:>10.1f}")
    print(f"{'sum of the stages':<66} {sum(us for _, us in rows):>10.1f}")
    print(f"WAL and database bytes written per event: {wal_per_event:.0f}")
    print(f"one fsynced group commit: {commit_ms:.2f} ms")


async def journal_stage(events: list[Any], batch: int) -> tuple[float, float, float]:
    from wahookd.journal import Journal

    with tempfile.TemporaryDirectory() as directory:
        journal = Journal(Path(directory), durable=True, dedupe_capacity=1_000_000)
        journal.open()
        cpu: list[int] = []
        journal_thread = {}

        def writer_cpu() -> int:
            # The writer thread's CPU time, read from /proc (thread_time is per calling thread).
            tid = journal_thread.get("tid")
            if tid is None:
                return 0
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * 10_000_000  # clock ticks (100 Hz) in ns

        import threading

        for thread in threading.enumerate():
            if thread.name == "journal-writer":
                journal_thread["tid"] = thread.native_id
        before_bytes, before_cpu = written_bytes(), writer_cpu()
        started = time.perf_counter()
        commits = 0
        for start in range(0, len(events), batch):
            await journal.commit([event[0] for event in events[start : start + batch]])
            commits += 1
        elapsed = time.perf_counter() - started
        cpu.append(writer_cpu() - before_cpu)
        wal = (written_bytes() - before_bytes) / len(events)
        await journal.close()
    return cpu[0] / len(events) / 1000, wal, elapsed / commits * 1000


async def file_sink_stage(encoded: list[bytes], count: int) -> float:
    from wahookd.events import load_json
    from wahookd.sinks.file import wahookd_register_sinks
    from wahookd.testing import build_sink

    [spec] = wahookd_register_sinks()
    with tempfile.TemporaryDirectory() as directory:
        sink = build_sink(spec, {"path": "events.jsonl"}, state_dir=Path(directory))
        await sink.start()  # type: ignore[attr-defined]
        events = [load_json(encoded[n % len(encoded)]) for n in range(count)]
        for n, event in enumerate(events):
            event["id"] = f"bench:{n}"
        started = time.thread_time_ns()
        for start in range(0, count, 50):
            for event in events[start : start + 50]:
                await sink.deliver(event)
            await sink.flush()  # type: ignore[attr-defined]
        spent = time.thread_time_ns() - started
        await sink.close()  # type: ignore[attr-defined]
    return spent / count / 1000


if __name__ == "__main__":
    main()
