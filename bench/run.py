"""Benchmark: a bare Tornado POST handler vs `wahookd serve`, under the same load, in one run.

Each server is pinned to core 0 and wrk to core 1 (50 connections, distinct ~1.5 KB signed
Wasender webhooks). wahookd runs with `durability = "fsync"` and a file sink that delivers
while the load runs; its dedupe index can be pre-filled (`--prefill 1000000`) to show memory
stays flat. Prints requests/s, p50/p99 latency, peak RSS and whether the sink kept up.

    .venv/bin/python bench/run.py [--seconds 15] [--prefill 1000000]

Needs `wrk` (Debian: apt-get install wrk). Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.conftest import free_port  # noqa: E402


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(HERE / "wasender.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    ours = " ".join(line for line in out.splitlines() if line.startswith("WRK"))
    fields = dict(re.findall(r"(\w+)=([\d.]+)", ours))
    return {"rps": rps, **{k: float(v) for k, v in fields.items()}}


def prefill(state_dir: Path, keys: int) -> None:
    from wahookd.journal import Journal

    journal = Journal(state_dir)
    journal.open()
    journal.close_blocking()  # the schema is made; fill the table directly
    conn = sqlite3.connect(state_dir / "journal.db")
    batch = 100_000
    for start in range(0, keys, batch):
        conn.executemany(
            "INSERT OR IGNORE INTO dedupe (key, used) VALUES (?, ?)",
            ((secrets.token_bytes(16), start + i) for i in range(min(batch, keys - start))),
        )
        conn.commit()
    conn.close()


def dedupe_lookup_us(state_dir: Path, probes: int = 20_000) -> float:
    """Average time of one dedupe index lookup (a miss) at the index's current size."""
    conn = sqlite3.connect(state_dir / "journal.db")
    keys = [secrets.token_bytes(16) for _ in range(probes)]
    began = time.perf_counter()
    for key in keys:
        conn.execute("SELECT 1 FROM dedupe WHERE key = ?", (key,)).fetchone()
    elapsed = time.perf_counter() - began
    conn.close()
    return elapsed / probes * 1e6


def bench_bare(seconds: int, connections: int) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(HERE / "bare_server.py"), str(port)])
    try:
        time.sleep(0.5)
        result = run_wrk(f"http://127.0.0.1:{port}/webhooks/bench", seconds, connections)
        result["rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return result


def bench_wahookd(seconds: int, connections: int, keys: int, workdir: Path) -> dict[str, float]:
    port = free_port()
    state = workdir / "state"
    state.mkdir(parents=True)
    if keys:
        began = time.monotonic()
        prefill(state, keys)
        print(
            f"prefilled {keys} dedupe keys in {time.monotonic() - began:.1f}s; "
            f"one lookup takes {dedupe_lookup_us(state):.1f} us",
            flush=True,
        )
    config = workdir / "wahookd.toml"
    sink_path = workdir / "events.jsonl"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
[state]
dir = "{state}"
durability = "fsync"
[ratelimit]
rate = 1000000
burst = 1000000
[dedupe]
capacity = {max(keys * 2, 1_000_000)}
[sources.bench]
provider = "wasender"
secret = "bench-secret"
[sinks.archive]
plugin = "file"
path = "{sink_path}"
max_bytes = 0
"""
    )
    log = (workdir / "daemon.log").open("wb")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "wahookd.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base + "/healthz", proc)
        result = run_wrk(base + "/webhooks/bench", seconds, connections)
        with urllib.request.urlopen(base + "/metrics") as answer:
            metrics = answer.read().decode()
        backlog = re.search(r'wahookd_sink_backlog\{sink="archive"\} ([\d.e+]+)', metrics)
        accepted = sum(
            float(v)
            for v in re.findall(r'wahookd_events_total\{kind="message",source="bench"\} ([\d.e+]+)', metrics)
        )
        result["backlog_at_end"] = float(backlog.group(1)) if backlog else float("nan")
        result["accepted"] = accepted
        began = time.monotonic()
        lines = 0
        while time.monotonic() - began < 120:
            lines = sum(1 for _ in sink_path.open("rb")) if sink_path.exists() else 0
            if lines >= accepted:
                break
            time.sleep(0.2)
        result["sink_lines"] = lines
        ids = [json.loads(line)["id"] for line in sink_path.read_bytes().splitlines()]
        result["sink_distinct"] = len(set(ids))
        result["catch_up_s"] = time.monotonic() - began
        result["rss_mb"] = peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        result["exit_code"] = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--prefill", type=int, default=0, help="dedupe keys to pre-fill")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench needs wrk: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="wahookd-bench-"))
    try:
        bare = bench_bare(args.seconds, args.connections)
        daemon = bench_wahookd(args.seconds, args.connections, args.prefill, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'peak RSS MB':>13}")
    for name, r in (("bare", bare), ("wahookd", daemon)):
        print(f"{name:<10}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['rss_mb']:>13.1f}")
    kept_up = daemon["sink_lines"] >= daemon["accepted"] and daemon["non2xx"] == 0
    print(
        f"\nwahookd/bare throughput: {daemon['rps'] / bare['rps']:.0%}; non-2xx: {daemon['non2xx']:.0f}; "
        f"accepted {daemon['accepted']:.0f} (at the end of the load), "
        f"sink lines {daemon['sink_lines']:.0f} ({daemon['sink_distinct']:.0f} distinct ids), "
        f"backlog at end of load {daemon['backlog_at_end']:.0f}, "
        f"caught up {daemon['catch_up_s']:.1f}s later; "
        f"sink kept up: {'yes' if kept_up else 'NO'}; exit code on SIGTERM {daemon['exit_code']:.0f}; "
        f"dedupe pre-filled with {args.prefill} keys"
    )
    print(json.dumps({"bare": bare, "wahookd": daemon, "prefill": args.prefill}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
