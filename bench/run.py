"""Benchmark: a bare Tornado POST handler vs `wahookd serve`, under the same load, in one run.

Each server is pinned to core 0 and wrk to core 1 (50 connections, distinct ~1.5 KB signed
Wasender webhooks); the load alternates between the two servers in slices, so that the
shared machine's drift in speed falls on both alike. wahookd runs with
`durability = "fsync"` and a file sink that delivers while the load runs; its dedupe index
can be pre-filled (`--prefill 1000000`) to show memory stays flat. Prints requests/s,
p50/p99 latency, peak RSS and whether the sink kept up.

    .venv/bin/python bench/run.py [--seconds 15] [--slices 3] [--prefill 1000000]

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
import statistics
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, url: str, seconds: int, connections: int) -> dict[str, float]:
    """One wrk run against the server `pid`, with the CPU time it spent."""
    before = cpu_seconds(pid)
    result = run_wrk(url, seconds, connections)
    result["cpu_s"] = cpu_seconds(pid) - before
    return result


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
    from wahookd.journal import Journal, open_store

    journal = Journal(state_dir)
    journal.open()
    journal.close_blocking()  # the schema is made; fill the index directly
    store = open_store(state_dir, write=True)
    batch = 100_000
    for start in range(0, keys, batch):
        store.fill_dedupe((secrets.token_bytes(16), start + i) for i in range(min(batch, keys - start)))
    store.close()


def dedupe_lookup_us(state_dir: Path, probes: int = 20_000) -> float:
    """Average time of one dedupe index lookup (a miss) at the index's current size."""
    from wahookd.journal import open_store

    store = open_store(state_dir)
    keys = [secrets.token_bytes(16) for _ in range(probes)]
    began = time.perf_counter()
    for key in keys:
        store.has_dedupe_key(key)
    elapsed = time.perf_counter() - began
    store.close()
    return elapsed / probes * 1e6


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(HERE / "bare_server.py"), str(port)])
    time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


def start_wahookd(keys: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
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
    wait_healthy(base + "/healthz", proc)
    return proc, base, sink_path


def combine(slices: list[dict[str, float]], seconds: float) -> dict[str, float]:
    """The slices of one server as one run: throughput over all of them, median latencies."""
    return {
        "rps": sum(s["requests"] for s in slices) / seconds,
        "requests": sum(s["requests"] for s in slices),
        "non2xx": sum(s["non2xx"] for s in slices),
        "errors": sum(s["errors"] for s in slices),
        "p50_ms": statistics.median(s["p50_ms"] for s in slices),
        "p99_ms": statistics.median(s["p99_ms"] for s in slices),
        "worst_p99_ms": max(s["p99_ms"] for s in slices),
        # CPU per request: the efficiency figure that the machine's drift moves least.
        "cpu_us": sum(s["cpu_s"] for s in slices) / sum(s["requests"] for s in slices) * 1e6,
    }


def check_sink(base: str, sink_path: Path) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics") as answer:
        metrics = answer.read().decode()
    backlog = re.search(r'wahookd_sink_backlog\{sink="archive"\} ([\d.e+]+)', metrics)
    accepted = sum(
        float(v)
        for v in re.findall(r'wahookd_events_total\{kind="message",source="bench"\} ([\d.e+]+)', metrics)
    )
    result = {"backlog_at_end": float(backlog.group(1)) if backlog else float("nan"), "accepted": accepted}
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
    return result


def run(seconds: int, slices: int, connections: int, keys: int, workdir: Path) -> tuple[dict, dict]:
    """Both servers run side by side on core 0, and the load alternates between them in
    slices: the shared machine's speed drifts by ±15% over tens of seconds, and running one
    server after the other would put that drift into the ratio."""
    bare_proc, bare_url = start_bare()
    daemon_proc, daemon_url, sink_path = start_wahookd(keys, workdir)
    try:
        part = max(1, round(seconds / slices))
        bare_slices, daemon_slices = [], []
        for _ in range(slices):
            bare_slices.append(measure(bare_proc.pid, bare_url + "/webhooks/bench", part, connections))
            daemon_slices.append(measure(daemon_proc.pid, daemon_url + "/webhooks/bench", part, connections))
        bare = combine(bare_slices, part * slices)
        bare["rss_mb"] = peak_rss_mb(bare_proc.pid)
        daemon = combine(daemon_slices, part * slices)
        daemon["slices_rps"] = [s["requests"] / part for s in daemon_slices]  # type: ignore[assignment]
        bare["slices_rps"] = [s["requests"] / part for s in bare_slices]  # type: ignore[assignment]
        daemon.update(check_sink(daemon_url, sink_path))
        daemon["rss_mb"] = peak_rss_mb(daemon_proc.pid)
        daemon_proc.send_signal(signal.SIGTERM)
        daemon["exit_code"] = daemon_proc.wait(60)
    finally:
        for proc in (bare_proc, daemon_proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return bare, daemon


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15, help="load time per server")
    parser.add_argument("--slices", type=int, default=3, help="alternating slices per server")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--prefill", type=int, default=0, help="dedupe keys to pre-fill")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench needs wrk: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="wahookd-bench-"))
    try:
        bare, daemon = run(args.seconds, args.slices, args.connections, args.prefill, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{'':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'worst p99':>11}"
        f"{'CPU us/req':>12}{'peak RSS MB':>13}"
    )
    for name, r in (("bare", bare), ("wahookd", daemon)):
        print(
            f"{name:<10}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['worst_p99_ms']:>11.2f}{r['cpu_us']:>12.0f}{r['rss_mb']:>13.1f}"
        )
    kept_up = daemon["sink_lines"] >= daemon["accepted"] and daemon["non2xx"] == 0
    ratios = zip(daemon["slices_rps"], bare["slices_rps"], strict=True)
    print(
        f"\nwahookd/bare throughput: {daemon['rps'] / bare['rps']:.0%}, "
        f"by CPU per request {bare['cpu_us'] / daemon['cpu_us']:.0%} "
        f"(per slice: {', '.join(f'{d / b:.0%}' for d, b in ratios)}); "
        f"non-2xx: {daemon['non2xx']:.0f}; "
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
