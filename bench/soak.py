"""Soak: `wahookd serve` at a steady rate for minutes, with a sink outage in the middle.

The daemon runs as a real process on loopback (`durability = "fsync"`), with one `forward`
sink to a receiver this script runs in a process of its own. Signed Wasender webhooks
(distinct ids, ~1.5 KB) arrive at `--rate` per second over keep-alive connections, paced
by the clock. Midway (or at each of `--outage-at`) the receiver goes down for `--outage`
seconds (its port closed, or answering 503 with `--outage-mode 503`), then comes back.
Every 10 s a line shows the daemon's RSS, WAL and database size, the sink's backlog
(`wahookd_sink_backlog`) and open file descriptors. At the end: what the daemon acknowledged
against what the receiver got (lost, doubled), how soon delivery resumed and the backlog
drained after each return, and whether RSS and WAL stayed within 10% of their level after
the first minute, outside the outages.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 300] [--outage 60] [--outage-at 0.5]

Loopback only; stops by itself (and stops what it started on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.conftest import free_port  # noqa: E402

SECRET = "soak-secret"
SINK = "crm"
SAMPLE_SECONDS = 10.0
PAD = "lorem ipsum dolor sit amet " * 40  # as bench/wasender.lua: ~1.5 KB per webhook
FLAT = 0.10  # the target: within 10% of the level after the first minute


# -- the receiver (a process of its own: `soak.py --receiver PORT IDS_FILE MODE`) --------------


def run_receiver(port: int, ids_path: Path, mode: str) -> None:
    """A forward target: 200 and one line per webhook-id received while up. SIGUSR1 takes it
    down (its port closed, or answering 503), SIGUSR2 brings it back, SIGTERM ends it."""

    async def main() -> None:
        ids = ids_path.open("a", buffering=1024 * 1024)
        state = {"up": True}
        server: asyncio.Server | None = None
        stop = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    headers = dict(
                        line.split(": ", 1)
                        for line in head.decode("latin-1").split("\r\n")[1:]
                        if ": " in line
                    )
                    headers = {k.lower(): v for k, v in headers.items()}
                    await reader.readexactly(int(headers.get("content-length", "0")))
                    closing = headers.get("connection", "").lower() == "close"
                    if state["up"]:
                        ids.write(headers.get("webhook-id", "?") + "\n")
                        status = b"200 OK"
                    else:
                        status = b"503 Service Unavailable"
                    writer.write(
                        b"HTTP/1.1 "
                        + status
                        + b"\r\nContent-Length: 0\r\n"
                        + (b"Connection: close\r\n" if closing else b"")
                        + b"\r\n"
                    )
                    await writer.drain()
                    if closing:
                        break
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        async def listen() -> asyncio.Server:
            return await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True, backlog=512)

        async def down() -> None:
            nonlocal server
            state["up"] = False
            if mode == "refuse" and server is not None:
                server.close()
                server = None

        async def up() -> None:
            nonlocal server
            if server is None:
                server = await listen()
            state["up"] = True

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(down()))
        loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(up()))
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await listen()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            ids.flush()
        ids.close()

    asyncio.run(main())


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """What the load generator saw; `interval_*` are reset at every sample."""

    acked: list[str] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    sent: int = 0
    interval_latencies: list[float] = field(default_factory=list)
    interval_sent: int = 0
    late: float = 0.0  # how far behind its schedule the load got, at most


def webhook(message_id: str) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "timestamp": 1700000000,
            "data": {
                "messages": {
                    "key": {"id": message_id, "fromMe": False, "remoteJid": "1234567890@s.whatsapp.net"},
                    "pushName": "Soak",
                    "messageTimestamp": 1700000000,
                    "message": {"conversation": PAD},
                }
            },
        },
        separators=(",", ":"),
    ).encode()


async def send_load(port: int, rate: float, seconds: float, load: Load, connections: int) -> None:
    """`rate` requests a second for `seconds`, each due at its own time, over keep-alive
    connections; a request's id is acked when the answer is 200 with one event accepted."""
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    prefix = f"SOAK{int(time.time())}X"

    async def connection() -> None:
        reader = writer = None
        while (number := await queue.get()) is not None:
            message_id = f"{prefix}{number}"
            body = webhook(message_id)
            request = (
                f"POST /webhooks/soak HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nX-Webhook-Signature: {SECRET}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            began = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                answer = await reader.readexactly(length)
                if re.search(rb"(?i)connection: *close", head):
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
                load.errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            load.interval_latencies.append(time.perf_counter() - began)
            load.codes[status] += 1
            if status == 200 and json.loads(answer).get("accepted") == 1:
                load.acked.append(f"soak:{message_id}")  # the event id: `<source>:<key.id>`
        if writer is not None:
            writer.close()

    workers = [asyncio.get_running_loop().create_task(connection()) for _ in range(connections)]
    began = time.monotonic()
    number = 0
    while (due := number / rate) < seconds:
        wait = began + due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            load.late = max(load.late, -wait)
        queue.put_nowait(number)
        load.sent += 1
        load.interval_sent += 1
        number += 1
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)


# -- watching the daemon ----------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def size_mb(path: Path) -> float:
    try:
        return path.stat().st_size / 1e6
    except OSError:
        return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.read().decode()

    return await asyncio.to_thread(get)


@dataclass
class Sample:
    at: float
    phase: str
    rss: float
    wal: float
    db: float
    backlog: float
    fds: int


def count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


# -- the run ----------------------------------------------------------------------------------


def start_daemon(workdir: Path, port: int, receiver_port: int, concurrency: int) -> subprocess.Popen[bytes]:
    config = workdir / "wahookd.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
[state]
dir = "{workdir / "state"}"
durability = "fsync"
[ratelimit]
rate = 1000000
burst = 1000000
[sources.soak]
provider = "wasender"
secret = "{SECRET}"
[sinks.{SINK}]
plugin = "forward"
url = "http://127.0.0.1:{receiver_port}/hook"
secret = "soak-forward-secret"
concurrency = {concurrency}
"""
    )
    log = (workdir / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wahookd.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"wahookd exited with {proc.returncode}; see {workdir / 'daemon.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("wahookd never answered /healthz")


@dataclass
class Processes:
    """What the run started: the daemon, the receiver, and where they listen."""

    daemon: subprocess.Popen[bytes]
    receiver: subprocess.Popen[bytes]
    port: int
    ids_path: Path

    def stop(self) -> None:
        for proc in (self.daemon, self.receiver):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def start(args: argparse.Namespace, workdir: Path) -> Processes:
    port, receiver_port = free_port(), free_port()
    ids_path = workdir / "received.txt"
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(receiver_port), str(ids_path), args.outage_mode]
    )
    time.sleep(0.5)
    try:
        daemon = start_daemon(workdir, port, receiver_port, args.sink_concurrency)
    except BaseException:
        receiver.terminate()
        raise
    return Processes(daemon, receiver, port, ids_path)


@dataclass
class Outage:
    """One time the receiver is down, and how the sink came back from it."""

    start: float  # seconds into the run
    end: float
    backlog_at_return: float = 0.0
    resumed_after: float | None = None  # the first delivery after the receiver's return
    drained_after: float | None = None  # the backlog down to a second of live traffic


async def backlog_of(port: int) -> float:
    return metric(await scrape(port), "wahookd_sink_backlog", f'{{sink="{SINK}"}}')


def sample(began: float, phase: str, pid: int, state: Path, backlog: float) -> Sample:
    return Sample(
        at=time.monotonic() - began,
        phase=phase,
        rss=rss_mb(pid),
        wal=size_mb(state / "journal.db-wal"),
        db=size_mb(state / "journal.db"),
        backlog=backlog,
        fds=open_fds(pid),
    )


async def soak(args: argparse.Namespace, workdir: Path, procs: Processes) -> dict[str, object]:
    seconds = args.minutes * 60
    outages = [Outage(seconds * at, seconds * at + args.outage) for at in args.outage_at]
    port, daemon, receiver, ids_path = procs.port, procs.daemon, procs.receiver, procs.ids_path
    state = workdir / "state"
    load = Load()
    samples: list[Sample] = []
    first_minute: Sample | None = None
    began = time.monotonic()
    try:
        traffic = asyncio.get_running_loop().create_task(
            send_load(port, args.rate, seconds, load, args.connections)
        )
        print(
            f"{'t s':>6} {'phase':<8} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'non-200':>7} "
            f"{'RSS MB':>7} {'WAL MB':>7} {'DB MB':>7} {'backlog':>8} {'fds':>4}",
            flush=True,
        )
        next_sample = began + SAMPLE_SECONDS
        down: Outage | None = None
        draining: Outage | None = None
        pending = list(outages)
        while not traffic.done():
            await asyncio.sleep(0.25)
            now = time.monotonic() - began
            if down is None and pending and now >= pending[0].start:
                down = pending.pop(0)
                receiver.send_signal(signal.SIGUSR1)
                print(f"# {now:6.1f}s receiver down ({args.outage_mode})", flush=True)
            elif down is not None and now >= down.end:
                receiver.send_signal(signal.SIGUSR2)
                draining, down = down, None
                draining.backlog_at_return = await backlog_of(port)
                print(f"# {now:6.1f}s receiver back; backlog {draining.backlog_at_return:.0f}", flush=True)
            if draining is not None:
                backlog = await backlog_of(port)
                if draining.resumed_after is None and backlog < draining.backlog_at_return:
                    draining.resumed_after = now - draining.end
                if backlog <= args.rate:  # within a second of the live traffic: caught up
                    draining.drained_after = now - draining.end
                    print(f"# {now:6.1f}s backlog {backlog:.0f}: drained {draining.drained_after:.1f}s after")
                    draining = None
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_SECONDS
                phase = (
                    "outage"
                    if down
                    else "drain"
                    if draining
                    else "before"
                    if len(pending) == len(outages)
                    else "between"
                    if pending
                    else "after"
                )
                current = sample(began, phase, daemon.pid, state, await backlog_of(port))
                samples.append(current)
                if first_minute is None and current.at >= 60 - SAMPLE_SECONDS / 2:
                    first_minute = current
                latencies = sorted(load.interval_latencies) or [float("nan")]
                non200 = sum(n for code, n in load.codes.items() if code != 200) + load.errors
                print(
                    f"{current.at:6.0f} {phase:<8} {load.interval_sent / SAMPLE_SECONDS:6.0f} "
                    f"{statistics.median(latencies) * 1e3:7.2f} "
                    f"{latencies[int(len(latencies) * 0.99)] * 1e3:7.2f} {non200:7d} "
                    f"{current.rss:7.1f} {current.wal:7.2f} {current.db:7.1f} {current.backlog:8.0f} "
                    f"{current.fds:4d}",
                    flush=True,
                )
                load.interval_latencies.clear()
                load.interval_sent = 0
        await traffic
        # Everything acked must reach the receiver: wait for the last of it.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            backlog = await backlog_of(port)
            if draining is not None and draining.drained_after is None and backlog <= args.rate:
                draining.drained_after = time.monotonic() - began - draining.end
            if backlog == 0:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # the receiver writes its ids out every 0.5 s
        final = sample(began, "end", daemon.pid, state, await backlog_of(port))
        await asyncio.sleep(WAL_IDLE_WAIT)
        idle_wal = size_mb(state / "journal.db-wal")
        daemon.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(daemon.wait, 60)
    finally:
        await asyncio.to_thread(procs.stop)
    received = Counter(ids_path.read_text().split()) if ids_path.exists() else Counter()
    acked = set(load.acked)
    outside = [s for s in samples if s.phase in ("before", "between", "after")]
    baseline = first_minute or (samples[0] if samples else final)

    def drift(values: list[float], base: float) -> float:
        return max((abs(v - base) / base for v in values), default=0.0) if base else float("nan")

    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "outage_mode": args.outage_mode,
        "outages": [outage.__dict__ for outage in outages],
        "sent": load.sent,
        "acked": len(acked),
        "codes": dict(load.codes),
        "client_errors": load.errors,
        "late_s": round(load.late, 3),
        "delivered": sum(1 for event_id in received if event_id in acked),
        "lost": len(acked - set(received)),
        "doubled": sum(1 for event_id, n in received.items() if n > 1),
        "unknown": sum(1 for event_id in received if event_id not in acked),
        "baseline": baseline.__dict__,
        "rss_drift": drift([s.rss for s in outside], baseline.rss),
        "wal_drift": drift([s.wal for s in outside], baseline.wal),
        "rss_max_mb": max((s.rss for s in samples), default=final.rss),
        "wal_max_mb": max((s.wal for s in samples), default=final.wal),
        "fds_max": max((s.fds for s in samples), default=final.fds),
        "end": final.__dict__,
        "wal_idle_mb": idle_wal,
        "exit_code": exit_code,
    }


WAL_IDLE_WAIT = 3.0  # the journal truncates its WAL after a second without commits


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--receiver":
        run_receiver(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=300.0, help="webhooks per second")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the receiver is down")
    parser.add_argument(
        "--outage-at",
        type=lambda text: [float(part) for part in text.split(",")],
        default=[0.5],
        help="when it goes down, as fractions of the run (several: 0.3,0.7)",
    )
    parser.add_argument("--outage-mode", choices=["refuse", "503"], default="refuse")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections of the load")
    parser.add_argument("--sink-concurrency", type=int, default=32, help="the forward sink's concurrency")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (state, logs)")
    args = parser.parse_args()
    seconds = args.minutes * 60
    starts = sorted(at * seconds for at in args.outage_at)
    if any(later < earlier + args.outage for earlier, later in itertools.pairwise(starts)):
        parser.error("outages must not overlap")
    if starts and starts[-1] + args.outage >= seconds:
        parser.error("the outages must end before the load does")
    args.outage_at = sorted(args.outage_at)
    workdir = Path(tempfile.mkdtemp(prefix="wahookd-soak-"))
    try:
        procs = start(args, workdir)
        try:
            result = asyncio.run(soak(args, workdir, procs))
        finally:
            procs.stop()
    finally:
        if args.keep:
            print(f"# work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    outages = result["outages"]
    drains = [outage["drained_after"] for outage in outages]  # type: ignore[attr-defined]
    ok = (
        result["lost"] == 0
        and result["doubled"] == 0
        and result["rss_drift"] <= FLAT  # type: ignore[operator]
        and result["wal_drift"] <= FLAT  # type: ignore[operator]
        and all(drain is not None and drain <= 10 for drain in drains)
    )
    recoveries = "; ".join(
        f"backlog {o['backlog_at_return']:.0f} at the receiver's return, delivery resumed "
        f"{o['resumed_after']}s and the backlog drained {o['drained_after']}s after it"
        for o in outages  # type: ignore[attr-defined]
    )
    print(
        f"\nacked {result['acked']} of {result['sent']} sent (answers {result['codes']}, "
        f"{result['client_errors']} connection errors); delivered {result['delivered']}, "
        f"lost {result['lost']}, doubled {result['doubled']}; {recoveries}; "
        f"RSS drift {result['rss_drift']:.1%}, WAL drift {result['wal_drift']:.1%} outside the outages "
        f"(max RSS {result['rss_max_mb']:.1f} MB, max WAL {result['wal_max_mb']:.2f} MB, "
        f"WAL {result['wal_idle_mb']:.2f} MB once idle); max fds {result['fds_max']}; "
        f"exit code on SIGTERM {result['exit_code']}; targets met: {'yes' if ok else 'NO'}"
    )
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
