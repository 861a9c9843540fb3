"""Benchmark: what `ratelimit.backend = "redis"` costs on the request path (SPEC §11).

Three figures, each for `memory` and `redis` buckets:

1. `take()` alone: the call the intake makes for every request, in ns (best of 5 runs).
2. The event loop's CPU per request at a steady offered load from many client addresses,
   settlement with Redis included (it runs on the same loop): CPU us per request, and the
   script calls per second it took.
3. With `--daemon`: `wahookd serve` under wrk (as bench/run.py: daemon on core 0, wrk on
   core 1, fsync and a file sink), the two backends alternating in slices: requests/s,
   p50/p99 and CPU us per request.

    .venv/bin/python bench/ratelimit.py [--daemon] [--seconds 10] [--slices 3]

Needs the Redis on 127.0.0.1:6379 (`--redis` for another); `--daemon` needs wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from wahookd.ratelimit import KEY_PREFIX, RateLimiter  # noqa: E402


def take_ns(url: str | None, calls: int = 200_000, clients: int = 1000) -> float:
    """ns per `take()`, the settlement task alive but given no turn during the timing."""

    async def once() -> float:
        limiter = RateLimiter(1e9, 10**9, 100_000, share_through=url)
        addresses = [f"10.1.{i // 256}.{i % 256}" for i in range(clients)]
        take = limiter.take
        began = time.perf_counter()
        for number in range(calls):
            take(addresses[number % clients])
        elapsed = time.perf_counter() - began
        await limiter.settled()
        limiter.close()
        return elapsed / calls * 1e9

    return min(asyncio.run(once()) for _ in range(5))


def loop_cpu(url: str | None, rate: int, seconds: float, clients: int) -> dict[str, float]:
    """CPU us per request of a loop taking `rate` requests/s from `clients` addresses."""

    async def once() -> dict[str, float]:
        limiter = RateLimiter(1e9, 10**9, 100_000, share_through=url)
        addresses = [f"10.2.{i // 256}.{i % 256}" for i in range(clients)]
        calls = 0
        shared = limiter._shared
        if shared is not None:  # count the script calls
            send = shared.send

            async def counted(consumed: dict[str, int]) -> list[float]:
                nonlocal calls
                calls += 1
                return await send(consumed)

            shared.send = counted  # type: ignore[method-assign]
        await asyncio.sleep(0.2)  # connected
        per_tick, tick = rate // 1000, 0.001  # the load in 1 ms steps, as a server sees it
        cpu, began = time.process_time(), time.monotonic()
        taken = 0
        while time.monotonic() - began < seconds:
            for _ in range(per_tick):
                limiter.take(addresses[taken % clients])
                taken += 1
            await asyncio.sleep(tick)
        await limiter.settled()
        used = time.process_time() - cpu
        elapsed = time.monotonic() - began
        limiter.close()
        return {"cpu_us": used / taken * 1e6, "calls_per_s": calls / elapsed, "requests": taken}

    return asyncio.run(once())


def in_process(url: str) -> None:
    memory, shared = take_ns(None), take_ns(url)
    print(f"take(): memory {memory:.0f} ns, redis {shared:.0f} ns (+{shared - memory:.0f} ns)")
    for clients in (1, 100, 5000):
        rows = {}
        for name, target in (("memory", None), ("redis", url)):
            runs = [loop_cpu(target, 8000, 3, clients) for _ in range(3)]
            rows[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        extra = rows["redis"]["cpu_us"] - rows["memory"]["cpu_us"]
        print(
            f"8000 req/s from {clients} addresses: loop CPU per request memory "
            f"{rows['memory']['cpu_us']:.2f} us, redis {rows['redis']['cpu_us']:.2f} us "
            f"(+{extra:.2f} us), {rows['redis']['calls_per_s']:.0f} script calls/s"
        )


def daemon_ab(url: str, seconds: int, slices: int) -> None:
    import run as bench  # bench/run.py: wrk, CPU accounting

    results: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
    with tempfile.TemporaryDirectory(prefix="wahookd-bench-rl-") as tmp:
        procs = {}
        for name in results:
            workdir = Path(tmp) / name
            workdir.mkdir()
            proc, base, _sink = bench.start_wahookd(0, workdir)
            if name == "redis":  # the same daemon, restarted with shared buckets
                proc.terminate()
                proc.wait(30)
                config = workdir / "wahookd.toml"
                text = config.read_text().replace(
                    "burst = 1000000\n", f'burst = 1000000\nbackend = "redis"\nurl = "{url}"\n'
                )
                config.write_text(text)
                log = (workdir / "daemon.log").open("ab")
                proc = subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        "0",
                        sys.executable,
                        "-m",
                        "wahookd.cli",
                        "serve",
                        "--config",
                        str(config),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                bench.wait_healthy(base + "/healthz", proc)
            procs[name] = (proc, base)
        try:
            for _ in range(slices):
                for name, (proc, base) in procs.items():
                    results[name].append(bench.measure(proc.pid, base + "/webhooks/bench", seconds, 50))
        finally:
            for proc, _base in procs.values():
                proc.terminate()
                proc.wait(30)
    for name, slices_run in results.items():
        combined = bench.combine(slices_run, seconds * slices)
        print(
            f"daemon, {name:6}: {combined['rps']:.0f} req/s, p50 {combined['p50_ms']:.2f} ms, "
            f"p99 {combined['p99_ms']:.2f} ms, {combined['cpu_us']:.0f} us CPU/request, "
            f"non-2xx {combined['non2xx']:.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--daemon", action="store_true", help="also the wrk A/B of two daemons")
    parser.add_argument("--seconds", type=int, default=10, help="wrk time per slice")
    parser.add_argument("--slices", type=int, default=3)
    args = parser.parse_args()
    in_process(args.redis)
    if args.daemon:
        daemon_ab(args.redis, args.seconds, args.slices)
    import redis

    client = redis.Redis.from_url(args.redis)
    for key in client.scan_iter(match=f"{KEY_PREFIX}10.*"):
        client.delete(key)
    client.close()


if __name__ == "__main__":
    main()
