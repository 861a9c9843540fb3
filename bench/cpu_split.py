"""Where the CPU goes, by kind of code: a bare Tornado handler vs `wahookd serve`, under load.

bench/run.py says how much more CPU a request costs in wahookd; bench/stages.py times
wahookd's own steps one by one. This says what kind of work the difference is, as the
kernel's sampler sees it (`perf record`), so that a cut can be aimed where it can land:

- the Python interpreter (libpython: bytecode, objects, the allocator for them);
- C code called from Python: SQLite, libc (malloc, memcpy), orjson and the other
  extension modules;
- the kernel, by the system call a sample is in: files (pwrite, fdatasync, pread, the
  locks: the journal's and the file sink's bytes, written back at the fsync), the network
  (send, recv, epoll), the GIL's hand-overs between threads (futex) and the rest (page
  faults, interrupts, a thread preempted).

Each server runs alone on core 0 with wrk on core 1 (50 connections, the same signed
~1.5 KB Wasender webhooks as bench/run.py, wahookd with `durability = "fsync"` and a file
sink), in alternating slices as in bench/run.py. Each sample stands for the CPU time of its
period; summed by kind and divided by the server's requests: microseconds per request
(also per thread, and the total as /proc counts it, which the sampler's own cost inflates
a little for both servers alike).

    .venv/bin/python bench/cpu_split.py [--seconds 12] [--slices 3] [--prefill 1000000]

Needs `perf` (Debian: linux-perf) and `wrk`. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402

# A kernel sample belongs to the outermost system call on its stack; none: the rest.
SYSCALL_AREAS = {
    "kernel: files (write, fsync, read, locks)": (
        "pwrite64",
        "pread64",
        "fdatasync",
        "fsync",
        "write",
        "read",
        "fcntl",
        "ftruncate",
        "openat",
        "close",
        "newfstatat",
        "newfstat",
    ),
    "kernel: network (send, recv, epoll)": (
        "sendto",
        "recvfrom",
        "epoll_wait",
        "epoll_ctl",
        "setsockopt",
        "accept4",
        "getpid",
    ),
    "kernel: GIL hand-overs (futex)": ("futex",),
}
AREA_OF_SYSCALL = {f"__x64_sys_{name}": area for area, names in SYSCALL_AREAS.items() for name in names}
LIBRARIES = {
    "libpython": "Python interpreter",
    "libsqlite3": "SQLite",
    "libc.so": "libc (malloc, memcpy, locks)",
}


def area_of(frames: list[tuple[str, str]]) -> str:
    """The area of one sample, from its stack: (symbol, dso), innermost first."""
    dso = frames[0][1]
    if "kernel" in dso:
        for outer_symbol, _ in reversed(frames):
            if outer_symbol in AREA_OF_SYSCALL:
                return AREA_OF_SYSCALL[outer_symbol]
        return "kernel: the rest (faults, interrupts, preemption)"
    for marker, area in LIBRARIES.items():
        if marker in dso:
            return area
    return "extension modules (orjson, _sqlite3, ...)"


def split(data: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(CPU µs by area, by thread) in one recording. A sample's period is the CPU time it
    stands for (perf's cpu-clock counts nanoseconds)."""
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,period,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    areas: dict[str, float] = defaultdict(float)
    threads: dict[str, float] = defaultdict(float)
    for sample in out.split("\n\n"):
        lines = sample.strip("\n").splitlines()
        if len(lines) < 2:
            continue
        comm, period = lines[0].rsplit(None, 1)
        frames = []
        for line in lines[1:]:
            symbol, _, dso = line.strip().partition(" (")
            frames.append((symbol.split(None, 1)[-1], dso))
        areas[area_of(frames)] += int(period) / 1000
        threads[comm.strip()] += int(period) / 1000
    return areas, threads


def record(pid: int, url: str, seconds: int, out: Path) -> tuple[float, float]:
    """Load the server for `seconds` under `perf record`: (requests, CPU µs as /proc
    counts it)."""
    perf = subprocess.Popen(
        [
            "perf",
            "record",
            "-F",
            "1999",
            "-g",
            "-o",
            str(out),
            "-p",
            str(pid),
            "--",
            "sleep",
            str(seconds + 1),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = bench.measure(pid, url, seconds, 50)
    perf.wait()
    return result["requests"], result["cpu_s"] * 1e6


class Tally:
    """One server's recordings added up: requests, CPU as /proc counts it, and as sampled."""

    def __init__(self) -> None:
        self.requests = 0.0
        self.cpu_us = 0.0
        self.areas: dict[str, float] = defaultdict(float)
        self.threads: dict[str, float] = defaultdict(float)

    def add(self, requests: float, cpu_us: float, data: Path) -> None:
        self.requests += requests
        self.cpu_us += cpu_us
        areas, threads = split(data)
        for area, us in areas.items():
            self.areas[area] += us
        for thread, us in threads.items():
            self.threads[thread] += us

    def per_request(self, us: float) -> float:
        return us / self.requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=12, help="recorded load per server, in all")
    parser.add_argument("--slices", type=int, default=3, help="alternating slices per server")
    parser.add_argument("--prefill", type=int, default=0, help="dedupe keys to pre-fill")
    args = parser.parse_args()
    for tool in ("perf", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/cpu_split.py needs {tool} (Debian: linux-perf, wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="wahookd-cpu-"))
    procs = []
    try:
        bare, bare_base = bench.start_bare()
        procs.append(bare)
        daemon, daemon_base, _sink = bench.start_wahookd(args.prefill, workdir / "wahookd")
        procs.append(daemon)
        servers = {"bare": (bare.pid, bare_base), "wahookd": (daemon.pid, daemon_base)}
        for _pid, base in servers.values():
            bench.run_wrk(base + "/webhooks/bench", 5, 50)  # warm-up, not recorded
        tallies = {name: Tally() for name in servers}
        seconds = max(1, args.seconds // args.slices)
        for number in range(args.slices):  # alternating: the machine's drift falls on both
            for name, (pid, base) in servers.items():
                data = workdir / f"{name}-{number}.perf"
                requests, cpu_us = record(pid, base + "/webhooks/bench", seconds, data)
                tallies[name].add(requests, cpu_us, data)
                data.unlink()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(tallies["bare"], tallies["wahookd"], args.prefill)


def print_table(bare: Tally, ours: Tally, prefill: int) -> None:
    print(f"CPU per request, µs, as perf sampled it; dedupe pre-filled: {prefill}")
    print(f"{'':50s} {'bare':>8s} {'wahookd':>8s} {'more':>8s}")
    rows = {
        area: (bare.per_request(bare.areas.get(area, 0.0)), ours.per_request(ours.areas.get(area, 0.0)))
        for area in set(bare.areas) | set(ours.areas)
    }
    for area, (theirs, mine) in sorted(rows.items(), key=lambda row: row[1][0] - row[1][1]):
        print(f"{area:50s} {theirs:8.1f} {mine:8.1f} {mine - theirs:+8.1f}")
    sampled = ours.per_request(sum(ours.areas.values()))
    bare_sampled = bare.per_request(sum(bare.areas.values()))
    print(f"{'all sampled':50s} {bare_sampled:8.1f} {sampled:8.1f} {sampled - bare_sampled:+8.1f}")
    cpu, bare_cpu = ours.per_request(ours.cpu_us), bare.per_request(bare.cpu_us)
    print(f"{'all, as /proc counts it':50s} {bare_cpu:8.1f} {cpu:8.1f} {cpu - bare_cpu:+8.1f}")
    print(f"wahookd by CPU per request: {bare_cpu / cpu:.0%} of bare (sampled: {bare_sampled / sampled:.0%})")
    by_thread = sorted(ours.threads.items(), key=lambda item: -item[1])
    # "python" is the event loop, with the executor threads that inherit its name
    print(
        "wahookd by thread (µs per request): "
        + ", ".join(f"{name} {ours.per_request(us):.1f}" for name, us in by_thread)
    )


if __name__ == "__main__":
    if os.geteuid() != 0 and Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip() not in (
        "-1",
        "0",
        "1",
    ):
        raise SystemExit("perf needs root, or kernel.perf_event_paranoid <= 1")
    main()
