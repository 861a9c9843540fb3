"""Benchmark for SPEC §11: requests/s and p50/p99 of one `sqlite` node, one `postgres` node
and two `postgres` nodes, each beside the bare Tornado handler of bench/bare_server.py, and
group commits per second on PostgreSQL (issue 14's Performance section).

Every wahookd runs with fsync (sqlite `durability = "fsync"`, PostgreSQL's own
`synchronous_commit`, which is left as the server has it and printed) and a file sink that
delivers while the load runs (on the postgres nodes: whichever node holds its lease). Load is
distinct signed ~1.5 KB Wasender webhooks from wrk (bench/wasender.lua). A node is pinned
to core 0 and wrk to core 1; the second node of the two-node run is pinned to core 1 and
each node gets its own wrk (half the connections), unpinned when no core is left.
The bare handler is measured right before each wahookd phase, so each ratio compares
neighbours in time (the machine's speed drifts). PostgreSQL itself is not pinned.

    .venv/bin/python bench/nodes.py [--seconds 10] [--connections 50] [--url postgresql://...]

Needs wrk and a PostgreSQL it may create (and drop) a schema in. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.run import cpu_seconds, start_bare, wait_healthy  # noqa: E402
from tests.conftest import free_port  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def wrk(url: str, seconds: int, connections: int, core: str | None, tag: str) -> dict[str, float]:
    """One wrk run; `tag` keeps the ids of concurrent wrk processes apart."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    command += ["-s", str(HERE / "wasender.lua"), url, "--", tag]
    if core is not None:
        command = ["taskset", "-c", core, *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    ours = " ".join(line for line in out.splitlines() if line.startswith("WRK"))
    fields = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", ours)}
    return {"rps": fields["requests"] / seconds, **fields}


def load(targets: list[tuple[str, str | None]], seconds: int, connections: int) -> list[dict[str, float]]:
    """wrk against every (url, core) at once, connections split between them."""
    results: list[dict[str, float]] = [{} for _ in targets]
    share = max(1, connections // len(targets))

    def one(index: int) -> None:
        url, core = targets[index]
        results[index] = wrk(url, seconds, share, core, f"T{index}{uuid.uuid4().hex[:6]}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def scrape(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([\d.e+-]+)$", text, re.M))


def start_node(workdir: Path, core: str, state: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    workdir.mkdir(parents=True)
    (workdir / "wahookd.toml").write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
access_log = false
[state]
dir = "{workdir / "state"}"
durability = "fsync"
{state}
[ratelimit]
rate = 1000000
burst = 1000000
[sources.bench]
provider = "wasender"
secret = "bench-secret"
[sinks.archive]
plugin = "file"
path = "{workdir.parent / (workdir.name + "-events.jsonl")}"
max_bytes = 0
"""
    )
    log = (workdir / "daemon.log").open("wb")
    config = workdir / "wahookd.toml"
    proc = subprocess.Popen(
        ["taskset", "-c", core, sys.executable, "-m", "wahookd.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base + "/healthz", proc)
    return proc, base


def sink_ids(paths: list[Path], count_only: bool = False) -> int:
    """Lines in the file sinks (every node has its own; the lease holder writes), or distinct ids."""
    lines = [line for path in paths if path.exists() for line in path.read_bytes().splitlines()]
    return len(lines) if count_only else len({json.loads(line)["id"] for line in lines})


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def xact_commits(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def phase(
    name: str,
    nodes: list[tuple[str, str]],
    workdir: Path,
    args: argparse.Namespace,
    state: str,
    bare: tuple[subprocess.Popen[bytes], str],
) -> dict:
    """Measure the bare handler, then `nodes` [(name, core)] under the same load."""
    bare_result = load([(bare[1] + "/webhooks/bench", "1")], args.seconds, args.connections)[0]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bases = []
        for node_name, core in nodes:
            proc, base = start_node(workdir / f"{name}-{node_name}", core, state)
            procs.append(proc)
            bases.append(base)
        time.sleep(1)  # leases settle
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        commits_before = sum(scrape(b, "wahookd_journal_commit_seconds_count") for b in bases)
        pg_before = xact_commits(args.url) if "postgres" in state else 0
        wrk_cores = ["1"] if len(nodes) == 1 else [None] * len(nodes)  # no core left for wrk
        results = load(
            [(b + "/webhooks/bench", c) for b, c in zip(bases, wrk_cores, strict=True)],
            args.seconds,
            args.connections,
        )
        commits = sum(scrape(b, "wahookd_journal_commit_seconds_count") for b in bases) - commits_before
        pg_commits = (xact_commits(args.url) - pg_before) if "postgres" in state else 0
        cpu = sum(cpu_seconds(p.pid) for p in procs) - sum(cpu_before)
        requests = sum(r["requests"] for r in results)
        accepted = sum(scrape(b, "wahookd_events_total") for b in bases)
        sinks = list(workdir.glob(f"{name}-*-events.jsonl"))
        began = time.monotonic()
        while time.monotonic() - began < 60 and sink_ids(sinks, count_only=True) < accepted:
            time.sleep(0.2)
        caught_up = time.monotonic() - began
        sink_lines = sink_ids(sinks, count_only=True)
        sink_distinct = sink_ids(sinks)
    finally:
        stop(procs)
    return {
        "name": name,
        "bare_rps": bare_result["rps"],
        "bare_p50_ms": bare_result["p50_ms"],
        "bare_p99_ms": bare_result["p99_ms"],
        "rps": requests / args.seconds,
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "non2xx": sum(r["non2xx"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "accepted": accepted,
        "group_commits_per_s": commits / args.seconds,
        "pg_xact_commits_per_s": pg_commits / args.seconds,
        "cpu_us_per_req": cpu / requests * 1e6 if requests else float("nan"),
        "sink_lines": sink_lines,
        "sink_distinct": sink_distinct,
        "sink_caught_up_s": caught_up,
        "exit_codes": [p.returncode for p in procs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="load time per phase")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL database to use (a schema is made)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench needs wrk: apt-get install wrk")
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type] # a name of our own
        sync = conn.execute("SHOW synchronous_commit").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    pg_url = f"{args.url}{'&' if '?' in args.url else '?'}options=-csearch_path%3D{schema}"
    postgres = f'backend = "postgres"\nurl = "{pg_url}"\nlease_seconds = 5'
    workdir = Path(tempfile.mkdtemp(prefix="wahookd-nodes-"))
    bare = start_bare()
    try:
        phases = [
            phase("sqlite x1", [("a", "0")], workdir, args, "", bare),
            phase("postgres x1", [("a", "0")], workdir, args, postgres, bare),
            phase("postgres x2", [("a", "0"), ("b", "1")], workdir, args, postgres, bare),
        ]
    finally:
        bare[0].kill()
        bare[0].wait()
        shutil.rmtree(workdir, ignore_errors=True)
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]
    print(f"\ncores: {os.cpu_count()}; PostgreSQL synchronous_commit={sync[0]} fsync={fsync[0]}")  # type: ignore[index]
    print(
        f"{'':<13}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'bare req/s':>11}{'/bare':>7}"
        f"{'CPU us/req':>11}{'commits/s':>10}{'db xact/s':>10}{'non2xx':>7}{'sink':>8}{'caught up s':>12}"
    )
    for r in phases:
        print(
            f"{r['name']:<13}{r['rps']:>8.0f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['bare_rps']:>11.0f}"
            f"{r['rps'] / r['bare_rps']:>7.0%}{r['cpu_us_per_req']:>11.0f}{r['group_commits_per_s']:>10.0f}"
            f"{r['pg_xact_commits_per_s']:>10.0f}{r['non2xx'] + r['errors']:>7.0f}"
            f"{r['sink_distinct']:>8}{r['sink_caught_up_s']:>12.1f}"
        )
    sqlite, one, two = (r["rps"] for r in phases)
    print(
        f"\npostgres x1 / sqlite x1: {one / sqlite:.0%} (target >= 60%); "
        f"postgres x2 / postgres x1: {two / one:.2f} (target > 1)"
    )
    print("commits/s: the nodes' group commits; db xact/s: every commit in the database (leases too)")
    print(json.dumps(phases))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
