"""Benchmark: how fast each built-in sink delivers from a full journal, against the intake.

One run, on this machine:

1. **Intake**: `wahookd serve` (pinned to core 0, `durability = "fsync"`, a file sink) takes
   distinct signed Wasender webhooks from wrk (core 1, 50 connections) for `--seconds`;
   its requests/s is the rate to keep up with, and the journal it leaves is the backlog.
2. **Each sink**: a copy of that journal, the sink's position set back to 0, and a daemon
   with only that sink (core 0; the forward receiver, bench/receiver.py, on core 1;
   PostgreSQL where the system runs it): events/s from start until the position reaches the journal's end.

    .venv/bin/python bench/sinks.py [--seconds 10] [--only file,forward,sql-sqlite,sql-postgres]
        [--forward-concurrency 1,4,16,64] [--tree DIR]

`--tree DIR` runs the daemons from another checkout (e.g. `git archive HEAD | tar -x -C DIR`)
to measure the code before a change with the same script. Needs `wrk` (Debian: apt-get
install wrk) and, for `sql-postgres`, PostgreSQL at `--postgres` (default the local `test`
database). Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.run import cpu_seconds, run_wrk, wait_healthy  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from wahookd.journal import JOURNAL_FILE, JournalMaintenance  # noqa: E402

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
SOURCE = """
[sources.bench]
provider = "wasender"
secret = "bench-secret"
"""


@dataclass
class Case:
    name: str
    table: str  # the [sinks.<name>] table's keys, TOML


def daemon_env(tree: Path | None) -> dict[str, str]:
    env = {**os.environ}
    env.pop("WAHOOKD_CONFIG", None)
    if tree is not None:
        # Ahead of the editable install's finder, which only answers what sys.path does not.
        env["PYTHONPATH"] = str(tree)
    return env


def start_daemon(workdir: Path, sinks: str, tree: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "wahookd.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
access_log = false
[state]
dir = "{workdir / "state"}"
durability = "fsync"
[ratelimit]
rate = 1000000
burst = 1000000
{SOURCE}
{sinks}
"""
    )
    log = (workdir / "daemon.log").open("ab")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "wahookd.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=daemon_env(tree),
        cwd=workdir,
    )
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base + "/healthz", proc)
    return proc, base


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fill(workdir: Path, seconds: int, connections: int, tree: Path | None) -> dict[str, float]:
    """The intake's rate, measured while it fills the journal."""
    sink = f'[sinks.archive]\nplugin = "file"\npath = "{workdir / "archive.jsonl"}"\nmax_bytes = 0\n'
    proc, base = start_daemon(workdir, sink, tree)
    try:
        before = cpu_seconds(proc.pid)
        result = run_wrk(base + "/webhooks/bench", seconds, connections)
        result["cpu_us"] = (cpu_seconds(proc.pid) - before) / max(1.0, result["requests"]) * 1e6
    finally:
        stop(proc)
    return result


def journal_end(state: Path) -> int:
    conn = sqlite3.connect(state / JOURNAL_FILE, isolation_level=None)
    try:
        return JournalMaintenance(conn).end()
    finally:
        conn.close()


def deliver(full: Path, case: Case, workdir: Path, tree: Path | None, timeout: float) -> dict[str, float]:
    """Events/s one sink delivers from a copy of the full journal."""
    state = workdir / "state"
    state.mkdir(parents=True)
    shutil.copy2(full / JOURNAL_FILE, state / JOURNAL_FILE)
    conn = sqlite3.connect(state / JOURNAL_FILE, isolation_level=None)
    journal = JournalMaintenance(conn)
    journal.set_cursor(case.name, 0)
    end = journal.end()
    proc, _base = start_daemon(workdir, f"[sinks.{case.name}]\n{case.table}", tree)
    try:
        began = time.monotonic()
        cpu_before = cpu_seconds(proc.pid)
        start_at = journal.cursors().get(case.name, 0)
        position = start_at
        while position < end and time.monotonic() - began < timeout:
            time.sleep(0.1)
            position = journal.cursors().get(case.name, 0)
            if proc.poll() is not None:
                raise SystemExit(f"{case.name}: the daemon exited:\n{(workdir / 'daemon.log').read_text()}")
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(proc.pid) - cpu_before
    finally:
        stop(proc)
        conn.close()
    delivered = position - start_at
    return {
        "events": float(delivered),
        "seconds": elapsed,
        "rate": delivered / elapsed if elapsed else 0.0,
        "cpu_us": cpu / delivered * 1e6 if delivered else float("nan"),
        "complete": float(position >= end),
    }


def cases(only: set[str], concurrencies: list[int], workdir: Path, prefix: str, receiver: str) -> list[Case]:
    chosen: list[Case] = []
    if "file" in only:
        path = workdir / "file-sink.jsonl"
        chosen.append(Case("file", f'plugin = "file"\npath = "{path}"\nmax_bytes = 0\n'))
    if "forward" in only:
        base = f'plugin = "forward"\nurl = "{receiver}"\nsecret = "bench-forward-secret"\n'
        chosen.append(Case("forward", base))  # at the default concurrency
        chosen += [Case(f"forward_c{n}", base + f"concurrency = {n}\n") for n in concurrencies]
    if "sql-sqlite" in only:
        chosen.append(Case("sql_sqlite", f'plugin = "sql"\nurl = "sqlite:///{workdir / "sink.db"}"\n'))
    if "sql-postgres" in only:
        chosen.append(
            Case("sql_postgres", f'plugin = "sql"\nurl = "{POSTGRES_URL}"\ntable_prefix = "{prefix}"\n')
        )
    return chosen


def drop_postgres_tables(prefix: str) -> None:
    from sqlalchemy import create_engine

    from wahookd.sinks.sqlstore import define_tables

    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        define_tables(prefix)[0].drop_all(engine)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="intake load time (fills the journal)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--only", default="file,forward,sql-sqlite,sql-postgres")
    parser.add_argument("--forward-concurrency", default="1,4,16,64")
    parser.add_argument("--tree", type=Path, help="run the daemons from this checkout")
    parser.add_argument("--timeout", type=float, default=300.0, help="most seconds one sink may take")
    parser.add_argument("--postgres", default=POSTGRES_URL)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench needs wrk: apt-get install wrk")
    globals()["POSTGRES_URL"] = args.postgres
    only = set(args.only.split(","))
    concurrencies = [int(n) for n in args.forward_concurrency.split(",") if n]
    workdir = Path(tempfile.mkdtemp(prefix="wahookd-sinks-"))
    prefix = f"bench_{secrets.token_hex(3)}_"
    receiver_port = free_port()
    receiver = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, str(HERE / "receiver.py"), str(receiver_port)]
    )
    results: dict[str, dict[str, float]] = {}
    try:
        intake = fill(workdir / "fill", args.seconds, args.connections, args.tree)
        full = workdir / "fill" / "state"
        end = journal_end(full)
        print(
            f"intake: {intake['rps']:.0f} webhooks/s ({intake['requests']:.0f} in {args.seconds}s, "
            f"{intake['non2xx']:.0f} non-2xx, {intake['cpu_us']:.0f} us CPU each); journal end {end}",
            flush=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{receiver_port}/ping", data=b"{}", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        url = f"http://127.0.0.1:{receiver_port}/webhooks/receiver"
        for case in cases(only, concurrencies, workdir, prefix, url):
            results[case.name] = deliver(full, case, workdir / case.name, args.tree, args.timeout)
            r = results[case.name]
            print(
                f"{case.name}: {r['rate']:.0f} events/s ({r['events']:.0f} in {r['seconds']:.1f}s, "
                f"{r['cpu_us']:.0f} us CPU each){'' if r['complete'] else ' (timed out)'}",
                flush=True,
            )
    finally:
        receiver.kill()
        receiver.wait()
        if "sql-postgres" in only:
            drop_postgres_tables(prefix)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'sink':<16}{'events/s':>10}{'vs intake':>11}{'CPU us/event':>14}")
    print(f"{'(intake)':<16}{intake['rps']:>10.0f}{'100%':>11}{intake['cpu_us']:>14.0f}")
    for name, r in results.items():
        print(f"{name:<16}{r['rate']:>10.0f}{r['rate'] / intake['rps']:>11.0%}{r['cpu_us']:>14.0f}")
    print(json.dumps({"intake": intake, "sinks": results, "tree": str(args.tree or HERE.parent)}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
