"""Benchmark: a bare Tornado POST handler vs `wahookd serve`, under the same load, in one run.

Each server is pinned to core 0 and wrk to core 1 (50 connections, distinct ~1.5 KB signed
Wasender webhooks); the load alternates between the servers in slices, so that the shared
machine's drift in speed falls on all of them alike. wahookd runs with
`durability = "fsync"` and a file sink that delivers while the load runs; its dedupe index
can be pre-filled (`--prefill 1000000`): at the default capacity of a million the index is
then full, and every new key evicts an old one, as on a daemon that has run for a while
(`--capacity 2000000`: the same keys in an index that is not full, which evicts nothing). Prints requests/s,
p50/p99 latency, CPU per request, peak RSS and whether the sink kept up; and, per thread of
wahookd, CPU and context switches per request (a switch is where the GIL or the core
changed hands: the event loop, the journal writer, its checkpointer, the readers).

Each server first takes `--warmup` seconds of the same load, not measured: a daemon that has
run for a while has its dedupe index's pages in their steady shape (a pre-filled index is
packed tighter than one that grew by merges, and its first merge splits most of its pages)
and the OS caches warm. `--runs 5` repeats the whole run with fresh servers and prints the
median of each figure.
`--against REF` adds a third server: wahookd as of git revision REF (a worktree under
/tmp), in the same alternating slices, so that a change is measured A/B against the code
before it on the same machine in the same minutes.

    .venv/bin/python bench/run.py [--seconds 15] [--slices 3] [--prefill 1000000]
        [--runs 5] [--against HEAD~1]

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


def thread_counters(pid: int) -> dict[str, list[int]]:
    """Per thread name: [CPU clock ticks, voluntary switches, involuntary switches]. Threads
    of one name are summed; the main thread (the event loop) is "loop"."""
    counters: dict[str, list[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "loop" if task.name == str(pid) else (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        switches = [int(v) for v in re.findall(r"(?:non)?voluntary_ctxt_switches:\s+(\d+)", status)]
        row = counters.setdefault(name, [0, 0, 0])
        row[0] += int(fields[11]) + int(fields[12])
        row[1] += switches[0]
        row[2] += switches[1]
    return counters


def measure(pid: int, url: str, seconds: int, connections: int) -> dict[str, float]:
    """One wrk run against the server `pid`, with the CPU time it spent (and per thread)."""
    before, threads_before = cpu_seconds(pid), thread_counters(pid)
    result = run_wrk(url, seconds, connections)
    result["cpu_s"] = cpu_seconds(pid) - before
    after = thread_counters(pid)
    result["threads"] = {  # type: ignore[assignment]
        name: [n - m for n, m in zip(row, threads_before.get(name, [0, 0, 0]), strict=True)]
        for name, row in after.items()
    }
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
    from wahookd.journal.dedupe import merged_rows

    journal = Journal(state_dir)
    journal.open()
    journal.close_blocking()  # the schema is made; fill the index directly
    store = open_store(state_dir, write=True)
    store.fill_dedupe(merged_rows(keys))
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


def start_wahookd(
    keys: int,
    workdir: Path,
    tree: Path | None = None,
    template: Path | None = None,
    capacity: int = 1_000_000,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`wahookd serve` on core 0, from this checkout or from `tree` (another revision's
    worktree); its state dir a copy of `template` when given (a pre-filled index)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    state = workdir / "state"
    if template is not None:
        shutil.copytree(template, state)
    else:
        state.mkdir(parents=True)
    if keys and template is None:
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
capacity = {max(keys, capacity)}
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
        cwd=tree,  # `-m` puts the working directory first on sys.path: that tree's wahookd
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
        "threads": per_request_threads(slices),
    }


def per_request_threads(slices: list[dict]) -> dict[str, list[float]]:
    """Per thread: [CPU us, voluntary, involuntary switches] per request over `slices`."""
    requests = sum(s["requests"] for s in slices)
    totals: dict[str, list[float]] = {}
    for one in slices:
        for name, row in one.get("threads", {}).items():
            total = totals.setdefault(name, [0.0, 0.0, 0.0])
            for i, value in enumerate(row):
                total[i] += value
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {
        name: [row[0] * tick_us / requests, row[1] / requests, row[2] / requests]
        for name, row in sorted(totals.items(), key=lambda item: -item[1][0])
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


def worktree(ref: str) -> Path:
    """A worktree of revision `ref` under /tmp (made once per revision, reused after)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=HERE.parent, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"wahookd-ab-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=HERE.parent, check=True)
    return tree


def run(
    seconds: int,
    slices: int,
    connections: int,
    keys: int,
    workdir: Path,
    against: Path | None = None,
    template: Path | None = None,
    warmup: int = 0,
    capacity: int = 1_000_000,
) -> dict[str, dict]:
    """The servers run side by side on core 0, and the load alternates between them in
    slices: the shared machine's speed drifts by ±15% over tens of seconds, and running one
    server after the other would put that drift into the ratio."""
    servers: dict[str, tuple[subprocess.Popen[bytes], str, Path | None]] = {}
    try:
        bare_proc, bare_url = start_bare()
        servers["bare"] = (bare_proc, bare_url, None)
        servers["wahookd"] = start_wahookd(keys, workdir / "a", template=template, capacity=capacity)
        if against is not None:
            servers["before"] = start_wahookd(
                keys, workdir / "b", tree=against, template=template, capacity=capacity
            )
        part = max(1, round(seconds / slices))
        if warmup:
            for _proc, url, _sink in servers.values():
                run_wrk(url + "/webhooks/bench", warmup, connections)
        measured: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(slices):
            for name, (proc, url, _sink) in servers.items():
                measured[name].append(measure(proc.pid, url + "/webhooks/bench", part, connections))
        results = {}
        for name, (proc, url, sink_path) in servers.items():
            result = combine(measured[name], part * slices)
            result["slices_rps"] = [one["requests"] / part for one in measured[name]]
            if sink_path is not None:
                result.update(check_sink(url, sink_path))
            result["rss_mb"] = peak_rss_mb(proc.pid)
            results[name] = result
        for name, (proc, _url, sink_path) in servers.items():
            if sink_path is not None:
                proc.send_signal(signal.SIGTERM)
                results[name]["exit_code"] = proc.wait(60)
    finally:
        for proc, _url, _sink in servers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def report(results: dict[str, dict], prefill: int) -> None:
    bare = results["bare"]
    print(
        f"\n{'':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'worst p99':>11}"
        f"{'CPU us/req':>12}{'peak RSS MB':>13}{'vs bare':>9}{'by CPU':>8}{'p99 x':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['worst_p99_ms']:>11.2f}{r['cpu_us']:>12.0f}{r['rss_mb']:>13.1f}"
            f"{r['rps'] / bare['rps']:>9.0%}{bare['cpu_us'] / r['cpu_us']:>8.0%}"
            f"{r['p99_ms'] / bare['p99_ms']:>7.2f}"
        )
    for name, r in results.items():
        if name == "bare":
            continue
        ratios = zip(r["slices_rps"], bare["slices_rps"], strict=True)
        kept_up = r["sink_lines"] >= r["accepted"] and r["non2xx"] == 0
        print(
            f"\n{name}: per slice {', '.join(f'{d / b:.0%}' for d, b in ratios)} of bare; "
            f"non-2xx: {r['non2xx']:.0f}; accepted {r['accepted']:.0f} (at the end of the load), "
            f"sink lines {r['sink_lines']:.0f} ({r['sink_distinct']:.0f} distinct ids), "
            f"backlog at end of load {r['backlog_at_end']:.0f}, caught up {r['catch_up_s']:.1f}s later; "
            f"sink kept up: {'yes' if kept_up else 'NO'}; exit code on SIGTERM {r['exit_code']:.0f}; "
            f"dedupe pre-filled with {prefill} keys"
        )
        print(f"  {'thread':<16}{'CPU us/req':>11}{'voluntary sw/req':>18}{'involuntary sw/req':>20}")
        for thread, (cpu, voluntary, involuntary) in r["threads"].items():
            print(f"  {thread:<16}{cpu:>11.1f}{voluntary:>18.3f}{involuntary:>20.3f}")


def median_of(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Each figure's median over the runs (per slice and per thread figures: the median run's)."""
    middle = sorted(runs, key=lambda one: one["wahookd"]["rps"] / one["bare"]["rps"])[len(runs) // 2]
    merged: dict[str, dict] = {}
    for name, result in middle.items():
        merged[name] = dict(result)
        for key, value in result.items():
            if isinstance(value, (int, float)):
                merged[name][key] = statistics.median(one[name][key] for one in runs)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15, help="load time per server")
    parser.add_argument("--slices", type=int, default=3, help="alternating slices per server")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--prefill", type=int, default=0, help="dedupe keys to pre-fill")
    parser.add_argument("--runs", type=int, default=1, help="whole runs, fresh servers each; medians")
    parser.add_argument("--against", metavar="REF", help="also run wahookd as of git revision REF")
    parser.add_argument("--warmup", type=int, default=10, help="seconds of unmeasured load first")
    parser.add_argument(
        "--capacity",
        type=int,
        default=1_000_000,
        help="dedupe.capacity (2000000: a pre-filled index not full)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench needs wrk: apt-get install wrk")
    against = worktree(args.against) if args.against else None
    workdir = Path(tempfile.mkdtemp(prefix="wahookd-bench-"))
    runs = []
    try:
        template = None
        if args.prefill:  # filled once, copied for every server and run
            template = workdir / "template"
            template.mkdir()
            began = time.monotonic()
            prefill(template, args.prefill)
            print(
                f"prefilled {args.prefill} dedupe keys in {time.monotonic() - began:.1f}s; "
                f"one lookup takes {dedupe_lookup_us(template):.1f} us",
                flush=True,
            )
        for number in range(args.runs):
            rundir = workdir / f"run{number}"
            runs.append(
                run(
                    args.seconds,
                    args.slices,
                    args.connections,
                    args.prefill,
                    rundir,
                    against,
                    template,
                    args.warmup,
                    args.capacity,
                )
            )
            if args.runs > 1:
                print(f"\n== run {number + 1} of {args.runs}")
                report(runs[-1], args.prefill)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.runs > 1:
        print(f"\n== median of {args.runs} runs")
    result = median_of(runs)
    report(result, args.prefill)
    if args.runs > 1:
        for name in [name for name in runs[0] if name != "bare"]:
            figures = {
                "throughput": [one[name]["rps"] / one["bare"]["rps"] for one in runs],
                "by CPU per request": [one["bare"]["cpu_us"] / one[name]["cpu_us"] for one in runs],
            }
            for what, ratios in figures.items():
                listed = ", ".join(f"{ratio:.0%}" for ratio in ratios)
                print(f"{name} {what} vs bare, per run: {listed}; median {statistics.median(ratios):.0%}")
            p99 = [one[name]["p99_ms"] / one["bare"]["p99_ms"] for one in runs]
            listed = ", ".join(f"{ratio:.2f}" for ratio in p99)
            print(f"{name} p99 / bare p99, per run: {listed}; median {statistics.median(p99):.2f}")
    print(json.dumps({"runs": runs, "median": result, "prefill": args.prefill}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
