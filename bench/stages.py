"""Per-stage CPU of one webhook, in-process: where wahookd's microseconds go.

Each stage of the request path runs on its own, many times, with the same ~1.5 KB signed
Wasender webhook that bench/run.py's wrk script sends, and its CPU time per request is
printed (`time.thread_time_ns` of this thread, so the fsync wait is not counted as CPU):

- Tornado's HTTP/1 parsing of the request head, as its connection does it;
- the rate limit, the source lookup, the signature check, parse + normalize;
- the answer: the JSON reply, the metric children, the access log line (to /dev/null, as
  the daemon writes it: `wahookd.log.info_line`);
- the journal: the writer's group commit (insert + dedupe index + WAL) per event, with
  fsync, measured in the writer thread's CPU time (with the checkpointer's, which copies the
  WAL into the database), the bytes written to the WAL and the database per event, and the
  writer's context switches per event: each is a GIL hand-over (or an fsync wait);
  `--prefill 1000000` runs it against a full index of a million keys, evicting;
- the file sink: deliver + flush per event.

    .venv/bin/python bench/stages.py [--requests 20000] [--batch 50] [--prefill 1000000]

The stages do not add up to a request under load: the loop's own work (epoll, the
self-pipe wake-ups of cross-thread hand-offs, Tornado's stream bookkeeping) is the rest,
measured as the difference to bench/run.py's CPU per request, which it prints per thread.
Loopback only; writes only in a temporary directory.
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
    parser.add_argument("--prefill", type=int, default=0, help="dedupe keys in the index, at capacity")
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
    wahookd_log._json_writer = wahookd_log.LineWriter(sink)  # the daemon's writer, to /dev/null
    request_log = structlog.get_logger("bench")

    def access_line(n: int) -> None:
        fields = {"method": "POST", "source": "bench", "status": 200, "client": "127.0.0.1", "ms": 1.0}
        wahookd_log.info_line(request_log, "request", fields | {"accepted": 1, "duplicates": 0})

    rows.append(("access log line", per_call_us(access_line, count)))

    journal = asyncio.run(journal_stage(events, args.batch, args.prefill))
    rows.append(
        (
            f"journal group commit, per event (writer + checkpointer, batches of {args.batch})",
            journal["cpu_us"],
        )
    )
    rows.append(("file sink deliver + flush, per event", asyncio.run(file_sink_stage(encoded, count))))
    in_writer = sum(journal["parts"].values())

    print(f"{'stage':<66} {'us/request':>10}")
    for name, us in rows:
        print(f"{name:<66} {us:>10.1f}")
    print(f"{'sum of the stages':<66} {sum(us for _, us in rows):>10.1f}")
    print("the journal group commit, by step (per event):")
    for name, us in journal["parts"].items():
        print(f"  {name:<64} {us:>10.1f}")
    rest = journal["cpu_us"] - in_writer
    print(f"  {'the rest: BEGIN/COMMIT, the batch, the checkpointer thread':<64} {rest:>10.1f}")
    print(f"WAL and database bytes written per event: {journal['bytes']:.0f}")
    print(f"writer context switches (GIL hand-overs, fsync waits) per event: {journal['switches']:.2f}")
    print(
        f"one fsynced group commit: {journal['commit_ms']:.2f} ms on average,"
        f" p99 {journal['commit_p99_ms']:.1f}, at most {journal['commit_max_ms']:.1f};"
        f" dedupe index pre-filled: {args.prefill}"
    )


def thread_figures(names: tuple[str, ...]) -> tuple[float, int]:
    """CPU seconds and voluntary context switches of this process's threads of `names`."""
    import threading

    cpu, switches = 0.0, 0
    for thread in threading.enumerate():
        if thread.name in names and thread.native_id is not None:
            task = Path(f"/proc/self/task/{thread.native_id}")
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
    return cpu, switches


def time_parts(journal: Any) -> dict[str, int]:
    """Wrap the writer's steps of a batch to add up the CPU time (ns) of each, in the thread
    that runs them: the event rows, the dedupe lookups, the merge slices, checkpoints."""
    names = ("event rows (encode + INSERT)", "dedupe lookups", "dedupe merge slice", "WAL restarts")
    spent = dict.fromkeys(names, 0)

    def timed(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time_ns()
            try:
                return call(*args, **kwargs)
            finally:
                spent[name] += time.thread_time_ns() - started

        return run

    unmerged = journal._unmerged
    journal._insert_events = timed("event rows (encode + INSERT)", journal._insert_events)
    unmerged.known = timed("dedupe lookups", unmerged.known)
    journal._finish_batch = timed("dedupe merge slice", journal._finish_batch)
    journal._checkpoint = timed("WAL restarts", journal._checkpoint)
    return spent


async def journal_stage(events: list[Any], batch: int, prefill: int) -> dict[str, float]:
    from wahookd.journal import Journal, open_store
    from wahookd.journal.dedupe import merged_rows

    with tempfile.TemporaryDirectory() as directory:
        if prefill:
            first = Journal(Path(directory))
            first.open()
            first.close_blocking()
            store = open_store(Path(directory), write=True)
            store.fill_dedupe(merged_rows(prefill))
            store.close()
        journal = Journal(Path(directory), durable=True, dedupe_capacity=max(prefill, 1_000_000))
        journal.open()
        parts = time_parts(journal)
        names = ("journal-writer", "journal-checkpoint")
        (before_cpu, before_switches), before_bytes = thread_figures(names), written_bytes()
        times = []
        for start in range(0, len(events), batch):
            began = time.perf_counter()
            await journal.commit([event[0] for event in events[start : start + batch]])
            times.append(time.perf_counter() - began)
        cpu, switches = thread_figures(names)
        written = written_bytes() - before_bytes
        parts = dict(parts)  # a clean stop merges every key left: not part of the load
        await journal.close()
    return {
        "parts": {name: ns / len(events) / 1000 for name, ns in parts.items()},
        "cpu_us": (cpu - before_cpu) / len(events) * 1e6,
        "switches": (switches - before_switches) / len(events),
        "bytes": written / len(events),
        "commit_ms": sum(times) / len(times) * 1000,
        "commit_p99_ms": sorted(times)[int(len(times) * 0.99)] * 1000,
        "commit_max_ms": max(times) * 1000,
    }


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
