"""`wahookd serve`: validate everything, then listen, then tell systemd; drain on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from tornado.httpserver import HTTPServer

from wahookd.app import make_app, make_metrics_app
from wahookd.delivery import SinkWorker, build_sink, sink_context
from wahookd.errors import ConfigError, WahookdError
from wahookd.handlers import AppState
from wahookd.hookspecs import Sink
from wahookd.journal import Journal
from wahookd.log import configure_logging, flush_logs
from wahookd.media.stage import MediaStage
from wahookd.metrics import make_metrics
from wahookd.plugins import Registry, collect, get_plugin_manager
from wahookd.ratelimit import RateLimiter
from wahookd.rejected import RejectedStore
from wahookd.settings import (
    Settings,
    SinkSettings,
    SourceSettings,
    load_settings,
    split_host_port,
)

log = structlog.get_logger("wahookd.daemon")
HOUSEKEEPING_SECONDS = 60.0
READ_CHUNK_BYTES = 16 * 1024
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


def run_serve(args: argparse.Namespace) -> int:
    configure_logging()
    prepared = prepare(args.config)
    return asyncio.run(serve(prepared))


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


async def serve(prepared: Prepared) -> int:
    settings = prepared.settings
    metrics = make_metrics()
    durable = settings.state.durability == "fsync"
    journal = Journal(
        settings.state.dir,
        durable=durable,
        dedupe_capacity=settings.dedupe.capacity,
        observe_commit=metrics.journal_commit.observe,
    )
    try:
        journal.open()
    except (OSError, sqlite3.Error) as exc:
        raise WahookdError(f"cannot open the journal {journal.path}: {exc}") from exc
    tables = settings.effective_sinks()
    workers = [
        SinkWorker(name, tables[name], sink, journal, metrics) for name, sink in prepared.sinks.items()
    ]
    for worker in workers:
        await worker.prepare()
    await refresh_dead_letters(journal, metrics, list(tables))
    media = MediaStage(settings, journal, metrics, structlog.get_logger("wahookd.media"))
    journal.on_media(media.wake)

    state = AppState(
        settings=settings,
        providers=prepared.registry.providers,
        journal=journal,
        metrics=metrics,
        limiter=RateLimiter(
            settings.ratelimit.rate, settings.ratelimit.burst, settings.ratelimit.max_clients
        ),
        rejected=RejectedStore(settings.state.dir / "rejected"),
    )
    separate_metrics = settings.server.metrics_listen is not None
    server = HTTPServer(
        make_app(state, with_metrics=not separate_metrics),
        # Tornado's own cap is a backstop; the handler answers 413 itself below it.
        max_body_size=settings.server.max_body_bytes * 2 + 65536,
        idle_connection_timeout=60,
        # Tornado allocates (and zeroes) a buffer of this size for every read from a
        # socket; its 64 KiB default cost ~10% of a webhook's CPU. Webhooks are a few KB.
        chunk_size=READ_CHUNK_BYTES,
    )
    host, port = split_host_port(settings.server.listen)
    servers = [server]
    try:
        server.listen(port, host)
        if separate_metrics:
            assert settings.server.metrics_listen is not None
            metrics_server = HTTPServer(make_metrics_app(state))
            metrics_host, metrics_port = split_host_port(settings.server.metrics_listen)
            metrics_server.listen(metrics_port, metrics_host)
            servers.append(metrics_server)
    except OSError as exc:
        await journal.close()
        raise WahookdError(f"cannot listen on {settings.server.listen}: {exc.strerror}") from exc

    tasks = TaskSet()
    worker_tasks = [tasks.start(worker.run(), f"sink:{worker.name}") for worker in workers]
    media_task = tasks.start(media.run(), "media")
    tasks.start(housekeeping(journal, settings, metrics, list(tables)), "housekeeping")
    tasks.start(flush_logs_often(), "flush-logs")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    log.info(
        "listening",
        listen=settings.server.listen,
        config=str(prepared.config_path or "(defaults)"),
        state_dir=str(settings.state.dir),
        sources=sorted(settings.sources),
        sinks=sorted(tables),
        durability=settings.state.durability,
    )
    for name, source in settings.sources.items():
        if source.verify == "none":
            log.warning("source_unverified", source=name, hint="anyone can post events to it")
    if not settings.sources:
        log.warning(
            "no_sources",
            hint='add a source to the config file:\n[sources.shop]\nprovider = "wasender"\n'
            'secret_file = "wasender-secret"\nthen point the provider at POST /webhooks/shop',
        )
    # Everything built so far lives as long as the process: keep the collector off it, and
    # collect the young generation less often (measured: +5-10% requests/s, lower p99).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    notify_systemd("READY=1")

    await stop.wait()
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
    for worker in workers:
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
