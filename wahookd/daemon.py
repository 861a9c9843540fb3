"""`wahookd serve`: validate everything, then listen, then tell systemd; drain on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from tornado.httpserver import HTTPServer

from wahookd.app import make_app, make_metrics_app
from wahookd.delivery import SinkWorker, build_sink, redaction_key, sink_context
from wahookd.errors import ConfigError, WahookdError
from wahookd.handlers import AppState, ScrapeCollector
from wahookd.hookspecs import Sink
from wahookd.journal import Journal, make_journal
from wahookd.log import configure_logging, flush_logs, set_level
from wahookd.media.stage import MediaStage
from wahookd.metrics import make_metrics
from wahookd.plugins import Registry, collect, get_plugin_manager
from wahookd.ratelimit import RateLimiter, TrustCache
from wahookd.rejected import RejectedStore
from wahookd.settings import (
    Settings,
    SinkSettings,
    SourceSettings,
    load_settings,
    split_host_port,
)
from wahookd.statelock import RELOAD_RESULT, StateLock, prepare_state_dir

log = structlog.get_logger("wahookd.daemon")
HOUSEKEEPING_SECONDS = 60.0
DEAD_LETTER_SECONDS = 1.0
PAUSE_SECONDS = 0.5
READ_CHUNK_BYTES = 16 * 1024
MAX_HEADER_READ = 128 * 1024
LOG_FLUSH_SECONDS = 0.25


@dataclass(frozen=True)
class Prepared:
    """A configuration that has passed every check, with its sinks built."""

    settings: Settings
    config_path: Path | None
    registry: Registry
    sinks: dict[str, Sink]


def prepare(config: str | None) -> Prepared:
    """Load and check everything that can be checked before binding a port.

    The one place a configuration is judged: `check-config`, `serve` and a reload all call
    it, so they say the same thing about the same file. Every problem is reported at once:
    when the file does not validate as a whole, its sources and sinks are still checked one
    by one, plugin options included.
    """
    registry = collect(get_plugin_manager())
    try:
        settings, path = load_settings(config)
    except ConfigError as exc:
        more = table_problems(exc.data or {}, exc.context, registry)
        raise ConfigError(unique(exc.problems + more)) from None
    problems = server_problems(settings)
    for name, source in settings.sources.items():
        problems.extend(source_problems(name, source, registry))
    sinks: dict[str, Sink] = {}
    for name, table in settings.effective_sinks().items():
        try:
            sinks[name] = build_sink(
                name, table, registry, sink_context(name, settings), settings.validation_context
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Prepared(settings, path, registry, sinks)


def server_problems(settings: Settings) -> list[str]:
    server = settings.server
    if server.tls_cert is None or server.tls_key is None:
        return []
    try:
        tls_context(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        return [f"server.tls_cert: cannot load {server.tls_cert} with {server.tls_key}: {exc}"]
    return []


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def source_problems(name: str, source: SourceSettings, registry: Registry) -> list[str]:
    if source.provider not in registry.providers:
        known = ", ".join(sorted(registry.providers)) or "none"
        return [f"sources.{name}.provider: unknown provider {source.provider!r} (installed: {known})"]
    if source.verify == "signature" and not source.secret_values():
        return [
            f"sources.{name}.secret: required (or secret_file / secrets); "
            'to accept unsigned webhooks say verify = "none"'
        ]
    return []


def table_problems(data: dict[str, Any], context: dict[str, Any], registry: Registry) -> list[str]:
    """The per-source and per-sink checks, on the tables of a file that failed as a whole."""
    problems: list[str] = []
    try:
        defaults = Settings.model_validate({"state": data.get("state", {})}, context=context)
    except ValidationError:
        defaults = Settings.model_validate({}, context=context)
    sources = data.get("sources")
    for name, table in (sources if isinstance(sources, dict) else {}).items():
        try:
            source = SourceSettings.model_validate(table, context=context)
        except (ValidationError, ValueError):
            continue  # already reported by the whole-file validation
        problems.extend(source_problems(name, source, registry))
    sinks = data.get("sinks")
    for name, table in (sinks if isinstance(sinks, dict) else {}).items():
        try:
            sink_table = SinkSettings.model_validate(table)
            build_sink(name, sink_table, registry, sink_context(name, defaults), context)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except (ValidationError, ValueError):
            continue
    return problems


def unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


# glibc's M_MMAP_THRESHOLD (mallopt(3)).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at its default, so a block of 128 KiB or more (a large
    body, its JSON, its journal row) is its own mapping, returned to the system when freed.

    Left dynamic, glibc raises the threshold to the size of the first large block freed,
    and from then on large bodies land in the heaps (arenas) of the threads that touch them,
    where they fragment: 170 bodies of 1.4 MB took the RSS to a peak of 139-171 MB, varying
    from run to run; fixed, 82-88 MB. A short-lived buffer of that size is now a fresh
    mapping each time (a page fault per 4 KiB touched): keep them off the hot path (the file
    sink writes in pieces). False off glibc, where nothing is changed."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def run_serve(args: argparse.Namespace) -> int:
    configure_logging()
    map_large_blocks()
    prepared = prepare(args.config)
    set_level(prepared.settings.server.log_level)
    # Everything wahookd creates (journal, dead letters, rejected bodies, media, sink
    # files) is for the service user only: the bodies carry people's messages.
    os.umask(0o077)
    # One daemon per state directory, on either backend: the lock keeps a second daemon off
    # a SQLite journal, and on PostgreSQL, where several nodes share the database, each
    # node's own directory (media, keys, reload verdicts); `wahookd reload` finds the daemon
    # by it.
    lock = StateLock(prepared.settings.state.dir)
    prepare_state_dir(prepared.settings.state.dir)
    lock.acquire()
    try:
        return asyncio.run(serve(prepared, args.config))
    finally:
        lock.release()


def notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("systemd_notify_failed", error=str(exc))


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class TaskSet:
    """Named background tasks with references kept (no bare create_task)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()))


def listen(server: HTTPServer, address: str, what: str) -> None:
    host, port = split_host_port(address)
    try:
        server.listen(port, host)
    except OSError as exc:
        raise WahookdError(f"cannot listen on {address} ({what}): {exc.strerror or exc}") from exc


async def serve(prepared: Prepared, config: str | None = None) -> int:
    settings = prepared.settings
    metrics = make_metrics()
    journal = make_journal(
        settings.state,
        dedupe_capacity=settings.dedupe.capacity,
        observe_commit=metrics.journal_commit.observe,
    )
    try:
        journal.open()
    except (OSError, sqlite3.Error) as exc:
        raise WahookdError(f"cannot open the journal {journal.path}: {exc}") from exc
    leases = getattr(journal, "leases", None)  # several nodes: who delivers what
    if leases is not None:
        if settings.media.store == "local":
            log.warning(
                "media_store_not_shared",
                detail='state.backend = "postgres" with media.store = "local": several nodes need a '
                'shared media store (media.store = "s3"), or a node delivers events whose media '
                "another node stored",
            )
        held_gauge = metrics.lease_held

        def show_lease(name: str, held: bool) -> None:
            if held_gauge is not None and name.startswith("sink:"):
                held_gauge.labels(name.removeprefix("sink:")).set(1 if held else 0)

        leases.listeners.append(show_lease)
    tables = settings.effective_sinks()
    redact_key = redaction_key(settings.state.dir)
    workers = {
        name: SinkWorker(name, tables[name], sink, journal, metrics, redact_key=redact_key)
        for name, sink in prepared.sinks.items()
    }
    for worker in workers.values():
        await worker.prepare()
    await refresh_dead_letters(journal, metrics, list(tables))
    media = MediaStage(
        settings,
        journal,
        metrics,
        structlog.get_logger("wahookd.media"),
        providers=prepared.registry.providers,
    )
    journal.on_media(media.wake)

    state = AppState(
        settings=settings,
        providers=prepared.registry.providers,
        journal=journal,
        metrics=metrics,
        limiter=RateLimiter.from_settings(settings.ratelimit, metrics.ratelimit_fallback),
        rejected=RejectedStore(settings.state.dir / "rejected"),
    )
    metrics.registry.register(ScrapeCollector(state))
    metrics.dedupe_capacity.set(settings.dedupe.capacity)
    metrics.dedupe_entries.set(journal.dedupe_entries)
    zero_series(metrics, settings, list(tables))
    server_settings = settings.server
    tls = None
    if server_settings.tls_cert is not None and server_settings.tls_key is not None:
        tls = tls_context(server_settings.tls_cert, server_settings.tls_key)
    separate_metrics = server_settings.metrics_listen is not None
    server = HTTPServer(
        make_app(state, with_metrics=not separate_metrics),
        ssl_options=tls,
        # Tornado's own cap is a backstop; the handler answers 413 itself below it.
        max_body_size=server_settings.max_body_bytes * 2 + 65536,
        # Above SPEC's 64 KiB of headers and 8 KiB of URL the router answers 431/414
        # itself; Tornado's cut (a dropped connection) only comes past this.
        max_header_size=MAX_HEADER_READ,
        # Tornado allocates (and zeroes) a buffer of this size for every read from a
        # socket; its 64 KiB default cost ~10% of a webhook's CPU. Webhooks are a few KB.
        chunk_size=READ_CHUNK_BYTES,
    )
    # The router closes idle connections itself (`server.idle_timeout`): Tornado's header
    # timeout (an hour when not set) is a timer set and cancelled for every request.
    server.conn_params.header_timeout = None
    servers = [server]
    try:
        listen(server, server_settings.listen, "server.listen")
        if server_settings.metrics_listen is not None:
            metrics_server = HTTPServer(make_metrics_app(state), max_header_size=MAX_HEADER_READ)
            servers.append(metrics_server)
            listen(metrics_server, server_settings.metrics_listen, "server.metrics_listen")
    except WahookdError:
        for http_server in servers:
            http_server.stop()
        await journal.close()
        raise

    reloader = Reloader(config, state, workers, media, tls)
    tasks = TaskSet()
    if leases is None:
        worker_tasks = [tasks.start(worker.run(), f"sink:{name}") for name, worker in workers.items()]
        media_task = tasks.start(media.run(), "media")
    else:
        for name in workers:
            if metrics.lease_held is not None:
                metrics.lease_held.labels(name).set(0)
        worker_tasks = [
            tasks.start(worker.run_leased(leases, f"sink:{name}"), f"sink:{name}")
            for name, worker in workers.items()
        ]
        media_task = tasks.start(run_leased(leases, "media", media.run), "media")
    tasks.start(housekeeping(journal, settings, metrics, list(tables)), "housekeeping")
    tasks.start(flush_logs_often(), "flush-logs")
    tasks.start(follow_dead_letters(journal, metrics, list(tables)), "dead-letters")
    tasks.start(follow_pauses(journal, workers), "pauses")
    interval = watchdog_interval()
    if interval is not None:
        tasks.start(watchdog(journal, interval), "watchdog")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reloader.request(tasks))

    log.info(
        "listening",
        listen=server_settings.listen,
        tls=tls is not None,
        config=str(prepared.config_path or "(defaults)"),
        state_dir=str(settings.state.dir),
        sources=sorted(settings.sources),
        sinks=sorted(tables),
        durability=settings.state.durability,
    )
    warn_about_sources(settings)
    # Everything built so far lives as long as the process: keep the collector off it, and
    # collect the young generation less often (measured: +5-10% requests/s, lower p99).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    notify_systemd("READY=1")

    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    deadline = time.monotonic() + settings.server.drain_seconds
    log.info("draining", inflight=len(state.inflight))
    notify_systemd("STOPPING=1")
    state.draining = True
    for http_server in servers:
        http_server.stop()
    # Requests get half of the drain time (a stalled body must not eat the sinks' share).
    requests_deadline = time.monotonic() + settings.server.drain_seconds / 2
    while state.inflight and time.monotonic() < requests_deadline:  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.02)
    for http_server in servers:
        await http_server.close_all_connections()
    for worker in workers.values():
        worker.stop()
    media_task.cancel()
    remaining = max(0.1, deadline - time.monotonic())
    _done, pending = await asyncio.wait([*worker_tasks, media_task], timeout=remaining)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await media.close()
    await journal.close()
    log.info("stopped", unfinished_sinks=len(pending))
    flush_logs()
    return 0


def zero_series(metrics: Any, settings: Settings, sinks: list[str]) -> None:
    """Every labelled series that alerts compute `increase()` over exists from the start,
    at 0: a counter born at 1 hides its first increment from Prometheus."""
    for outcome in ("ok", "error"):
        metrics.reloads.labels(outcome)
    for name in sinks:
        metrics.sink_paused.labels(name).set(0)
        metrics.sink_oldest_pending.labels(name)
        for outcome in ("delivered", "retry", "dead"):
            metrics.sink_deliveries.labels(name, outcome)
    for source in settings.sources:
        metrics.duplicates.labels(source)
        for outcome in ("stored", "retry", "failed", "refused"):
            metrics.media_downloads.labels(source, outcome)


def warn_about_sources(settings: Settings) -> None:
    for name, source in settings.sources.items():
        if source.verify == "none":
            log.warning("source_unverified", source=name, hint="anyone can post events to it")
    if not settings.sources:
        log.warning(
            "no_sources",
            hint='add a source to the config file:\n[sources.shop]\nprovider = "wasender"\n'
            'secret_file = "wasender-secret"\nthen point the provider at POST /webhooks/shop',
        )


# -- reload (SIGHUP) -------------------------------------------------------------------

# Server keys bound into the listening sockets at start; a reload reports and keeps them.
RESTART_SERVER_KEYS = ("listen", "metrics_listen", "max_body_bytes")


def merge_reload(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """What a reload applies: `new`, except the keys that need a restart, which keep their
    old values; and the names of those keys (SPEC §10)."""
    kept: list[str] = []
    server: dict[str, Any] = {}
    for key in RESTART_SERVER_KEYS:
        if getattr(new.server, key) != getattr(old.server, key):
            kept.append(f"server.{key}")
            server[key] = getattr(old.server, key)
    if new.server.tls != old.server.tls:  # plain HTTP to HTTPS or back needs a new socket
        kept.append("server.tls_cert")
        server.update(tls_cert=old.server.tls_cert, tls_key=old.server.tls_key)
    update: dict[str, Any] = {"server": new.server.model_copy(update=server)}
    for section in ("state", "dedupe", "media"):
        if getattr(new, section) != getattr(old, section):
            kept.append(section)
            update[section] = getattr(old, section)
    old_sinks, new_sinks = old.effective_sinks(), new.effective_sinks()
    sinks: dict[str, SinkSettings] = {}
    for name, table in old_sinks.items():
        fresh = new_sinks.get(name)
        if fresh is None:
            kept.append(f"sinks.{name} (removed)")
            sinks[name] = table
        elif fresh.plugin != table.plugin or fresh.plugin_options() != table.plugin_options():
            kept.append(f"sinks.{name} (plugin options)")
            sinks[name] = table
        else:
            sinks[name] = fresh  # filters and retry settings apply at once
    kept.extend(f"sinks.{name} (added)" for name in new_sinks if name not in old_sinks)
    update["sinks"] = sinks if old.sinks else {}
    merged = new.model_copy(update=update)
    merged._config_dir = new._config_dir
    return merged, kept


class Reloader:
    """SIGHUP: re-read the configuration and apply what can change without a restart.

    The new file goes through `prepare`, the same checks as `check-config` and `serve`; an
    invalid one changes nothing. Requests never wait for it: the settings object every
    request reads is swapped in one assignment, on the event loop."""

    def __init__(
        self,
        config: str | None,
        state: AppState,
        workers: dict[str, SinkWorker],
        media: MediaStage,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.config = config
        self.state = state
        self.workers = workers
        self.media = media
        self.tls = tls
        self.running = False
        self.again = False
        self.generation = 0

    def request(self, tasks: TaskSet) -> None:
        if self.running:  # a second SIGHUP during a reload: one more pass afterwards
            self.again = True
            return
        self.running = True
        tasks.start(self.run(), "reload")

    async def run(self) -> None:
        try:
            while True:
                self.again = False
                await self.reload_once()
                if not self.again:
                    return
        finally:
            self.running = False

    async def reload_once(self) -> None:
        notify_systemd(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
        metrics = self.state.metrics
        try:
            prepared = await asyncio.to_thread(prepare, self.config)
            merged, kept = merge_reload(self.state.settings, prepared.settings)
            if self.tls is not None and merged.server.tls_cert is not None:
                assert merged.server.tls_key is not None
                # New handshakes use the new certificate; open connections keep theirs.
                await asyncio.to_thread(
                    self.tls.load_cert_chain, merged.server.tls_cert, merged.server.tls_key
                )
        except (ConfigError, OSError, ssl.SSLError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            metrics.reloads.labels("error").inc()
            log.error("reload_failed", problems=problems, hint="nothing changed")
            outcome: dict[str, Any] = {"outcome": "error", "problems": problems}
        else:
            self.apply(merged, prepared)
            metrics.reloads.labels("ok").inc()
            log.info("reloaded", sources=sorted(merged.sources), restart_required=kept)
            outcome = {"outcome": "ok", "restart_required": kept}
        finally:
            notify_systemd("READY=1")
        self.generation += 1
        await asyncio.to_thread(write_reload_result, self.state.settings.state.dir, self.generation, outcome)

    def apply(self, settings: Settings, prepared: Prepared) -> None:
        state = self.state
        limits = settings.ratelimit
        state.limiter.reconfigure(limits)
        state.trusted_peer = TrustCache(settings.server.trusted_proxies)
        state.providers = prepared.registry.providers
        state.settings = settings  # one assignment: a request sees the old or the new
        self.media.settings = settings
        self.media.providers = prepared.registry.providers
        tables = settings.effective_sinks()
        for name, worker in self.workers.items():
            worker.reconfigure(tables[name])
        set_level(settings.server.log_level)


def write_reload_result(state_dir: Path, generation: int, outcome: dict[str, Any]) -> None:
    """What the last reload did, for `wahookd reload` (the unit's `ExecReload=`), which
    waits for it, so that `systemctl reload` ends when the reload has and fails when it did."""
    path = state_dir / RELOAD_RESULT
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "generation": generation, **outcome}))
    temporary.replace(path)


# -- watchdog --------------------------------------------------------------------------


def watchdog_interval() -> float | None:
    """Half of systemd's `WatchdogSec=` (sd_watchdog_enabled(3)), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def run_leased(leases: Any, lease: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run `run()` (a stage that runs until cancelled) only while this node holds `lease`."""
    while True:
        await leases.wait_held(lease)
        task = asyncio.ensure_future(run())
        lost = asyncio.ensure_future(leases.wait_lost(lease))
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, lost):
                pending.cancel()
            for pending in (task, lost):
                with contextlib.suppress(asyncio.CancelledError):
                    await pending


async def watchdog(journal: Journal, interval: float) -> None:
    """`WATCHDOG=1` only while the event loop turns (this task runs at all) and the journal
    writer completes commits: a stuck writer means 503s for every webhook, and systemd's
    restart is the remedy."""
    withheld = False
    while True:
        await asyncio.sleep(interval)
        if journal.writer_stalled(interval):
            if not withheld:
                log.error("watchdog_withheld", reason="journal writer stuck", seconds=interval)
            withheld = True
            continue
        if withheld:
            log.info("watchdog_resumed")
        withheld = False
        notify_systemd("WATCHDOG=1")


async def flush_logs_often() -> None:
    """Request lines wait in the stderr buffer (see `log.LineWriter`); write them out soon."""
    while True:
        await asyncio.sleep(LOG_FLUSH_SECONDS)
        flush_logs()


async def refresh_dead_letters(journal: Journal, metrics: Any, sinks: list[str]) -> None:
    """A series for every sink, zero included, so alerts see it drop after a replay too."""
    counts = await journal.dead_letter_counts()
    for name in sinks:
        metrics.dead_letters.labels(name).set(counts.get(name, 0))


async def follow_dead_letters(journal: Journal, metrics: Any, sinks: list[str]) -> None:
    """The dead-letter gauge follows the store within a second, also when another process
    changed it (`wahookd replay --dead` empties it while the daemon runs): one grouped count
    in a reader thread per second."""
    while True:
        await asyncio.sleep(DEAD_LETTER_SECONDS)
        try:
            await refresh_dead_letters(journal, metrics, sinks)
        except WahookdError as exc:
            log.warning("dead_letter_count_failed", error=str(exc))


async def follow_pauses(journal: Journal, workers: dict[str, SinkWorker]) -> None:
    """`wahookd pause SINK` / `resume SINK` write the journal's `pauses` table from another
    process; the daemon obeys within `PAUSE_SECONDS`."""
    while True:
        try:
            paused = await journal.paused_sinks()
        except WahookdError as exc:
            log.warning("pause_read_failed", error=str(exc))
        else:
            for name, worker in workers.items():
                worker.set_operator_pause(name in paused)
        await asyncio.sleep(PAUSE_SECONDS)


async def housekeeping(journal: Journal, settings: Settings, metrics: Any, sinks: list[str]) -> None:
    """Prune delivered events past the retention and refresh the gauges, once a minute."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        try:
            cutoff = time.time() - settings.state.retention_days * 86400
            while await journal.prune(sinks, cutoff) > 0:  # noqa: ASYNC110 - yield between batches
                await asyncio.sleep(0)
            await refresh_dead_letters(journal, metrics, sinks)
            metrics.dedupe_entries.set(journal.dedupe_entries)
        except WahookdError as exc:
            log.error("housekeeping_failed", error=str(exc))
