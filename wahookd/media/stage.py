"""The media stage: between the journal and the sinks (SPEC §1, step 5).

The journal holds an event that carries media with ``dseq`` NULL; sinks only see events
with a ``dseq``. This stage takes those events (`Journal.pending_media`, oldest first),
downloads and stores each file, fills ``media.stored`` / ``sha256`` / ``size`` /
``mime_type`` / ``filename``, and hands the event back (`Journal.complete_media`), which
releases it to the sinks. After ``media.max_attempts`` tries, or at once when retrying
cannot help (a refused host, a failed MAC), the event is completed with ``media.error``
so nothing waits forever. Events without media never enter this stage; an event whose
media was already stored (or given up on) upstream, such as one relayed by another
wahookd's ``forward`` sink, is handed back unchanged.

The stage never branches on a provider's name: the event's provider (`Provider.media_hosts`
and `Provider.fetch_media`) says where its files are and fetches them through the shared
steps in `wahookd.media.retrieval`, behind the guard.

Retry state lives in memory only: after a restart every event still pending in the
journal is picked up again and retried from attempt zero. Storing is idempotent (the
object key is derived from the content), so a file stored just before a crash is simply
stored again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from wahookd.media.errors import MediaError
from wahookd.media.fetch import Fetcher
from wahookd.media.retrieval import MediaFetch, Retrieved
from wahookd.media.store import MediaStore, bare_mime, make_store, object_key
from wahookd.settings import Settings

if TYPE_CHECKING:
    from wahookd.providers import Provider

# Events held in memory at once (downloading or waiting for a retry); the rest wait in
# the journal, so memory stays bounded whatever the backlog (SPEC §9).
MAX_TRACKED = 512
# A missed wake-up costs at most this long.
POLL_INTERVAL = 5.0
# Each commit with media wakes the stage, and each poll re-reads the events in hand, so
# wake-ups are coalesced: briefly while the stage is idle, longer while it has a backlog.
MIN_POLL_GAP = 0.05
BACKLOG_POLL_GAP = 1.0
# However many attempts are configured, no single wait grows past this.
BACKOFF_MAX = 900.0
COMPLETE_RETRY_MAX = 30.0


class MediaJournal(Protocol):
    """What the stage needs of `wahookd.journal.Journal`."""

    async def pending_media(self, limit: int) -> list[tuple[int, dict[str, Any]]]: ...

    async def complete_media(self, seq: int, event: dict[str, Any]) -> None: ...


class MediaStage:
    """Downloads and stores the media of journaled events, then releases them to the sinks.

    The daemon constructs it, runs `run()` as a task, calls `wake()` after each journal
    commit that had media events, and awaits `close()` at shutdown. `providers` are the
    registered providers by name; without them the stage asks the plugin manager (built-in
    and entry-point providers, as the daemon registers them) at its first media event.
    """

    def __init__(
        self,
        settings: Settings,
        journal: MediaJournal,
        metrics: Any,
        log: Any,
        store: MediaStore | None = None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.journal = journal
        self.metrics = metrics
        self.log = log
        media = settings.media
        self.max_attempts = media.max_attempts
        self.backoff_initial = media.backoff_initial
        self.fetcher = Fetcher(
            media.allow_hosts, media.max_bytes, media.timeout, max_clients=media.concurrency
        )
        self.store = store or make_store(settings)
        # Scratch files live under the media directory so the local store's rename is atomic.
        self.workdir = settings.media_dir / ".incoming"
        self._slots = asyncio.Semaphore(media.concurrency)
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Events handed back lately: a poll that read the journal just before a hand-back
        # committed must not start them again.
        self._finished: OrderedDict[int, None] = OrderedDict()

    def wake(self) -> None:
        """New media events are in the journal: look now. Safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wakeup.set()  # run() has not started; it polls first anyway
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        """Poll the journal until cancelled; each pending event gets its own task."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._prepare_workdir)
        try:
            while True:
                self._wakeup.clear()
                await self._poll()
                # Not `wait_for`: on Python 3.11 it drops a cancellation that comes as the
                # wake-up is set, and the stage would poll on after the daemon cancelled it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await self._wakeup.wait()
                busy = len(self._tasks) >= self.settings.media.concurrency
                await asyncio.sleep(BACKLOG_POLL_GAP if busy else MIN_POLL_GAP)
        finally:
            await self._cancel_tasks()

    async def close(self) -> None:
        """Stop in-flight downloads (their events stay pending for the next start)."""
        await self._cancel_tasks()
        self.fetcher.close()
        await self.store.close()

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Scratch files a crash left behind; their events are still pending and start over.
        for leftover in self.workdir.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)

    async def _poll(self) -> None:
        room = MAX_TRACKED - len(self._tasks)
        if room <= 0:
            return
        try:
            # Oldest first; the ones already in hand come back too, so ask for that many more.
            pending = await self.journal.pending_media(len(self._tasks) + room)
        except Exception as exc:
            self.log.error("media_poll_failed", error=str(exc))
            return
        for seq, event in pending:
            if seq in self._tasks or seq in self._finished:
                continue
            if len(self._tasks) >= MAX_TRACKED:
                break
            self._spawn(seq, event)

    def _spawn(self, seq: int, event: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(seq, event), name=f"media-{seq}")
        self._tasks[seq] = task
        task.add_done_callback(functools.partial(self._forget, seq))

    def _forget(self, seq: int, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(seq, None)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, seq: int, event: dict[str, Any]) -> None:
        """All attempts for one event, then hand it back to the journal."""
        media = event.get("media")
        source = str(event.get("source") or "")
        if not isinstance(media, dict) or media.get("stored") is not None or media.get("error") is not None:
            # Nothing to fetch, or settled upstream (an event relayed from another wahookd).
            await self._complete(seq, event)
            return
        attempt = 0
        while True:
            async with self._slots:
                try:
                    await self._attempt(seq, event, media, source)
                except MediaError as exc:
                    error = exc
                except Exception as exc:  # a bug must not park the event forever
                    self.log.exception("media_internal_error", source=source, seq=seq)
                    error = MediaError(f"internal error: {type(exc).__name__}", retry=True)
                else:
                    self._count(source, "stored")
                    await self._complete(seq, event)
                    return
            attempt += 1
            if not error.retry or attempt >= self.max_attempts:
                self._count(source, error.outcome)
                self.log.warning(
                    "media_failed", source=source, seq=seq, attempts=attempt, reason=error.reason
                )
                media["error"] = error.reason
                await self._complete(seq, event)
                return
            delay = min(self.backoff_initial * 2 ** (attempt - 1), BACKOFF_MAX)
            self._count(source, "retry")
            self.log.info(
                "media_retry",
                source=source,
                seq=seq,
                attempt=attempt,
                delay=delay,
                reason=error.reason,
            )
            await asyncio.sleep(delay)

    async def provider(self, name: str) -> Provider | None:
        """The registered provider called `name` (None when no plugin provides it)."""
        if self.providers is None:
            # Reading the entry points scans the installed distributions (2.3 ms measured
            # here): once, off the event loop.
            self.providers = await asyncio.to_thread(installed_providers)
        return self.providers.get(name)

    async def retrieve(self, event: dict[str, Any], source: str) -> Retrieved:
        """The plaintext file of `event`, from its provider, behind the source's host policy."""
        settings = self.settings.sources.get(source)
        if settings is None:
            raise MediaError("source is no longer configured")
        name = str(event.get("provider") or settings.provider)
        provider = await self.provider(name)
        if provider is None:
            raise MediaError(f"no media retrieval for provider {name}")
        policy = self.fetcher.policy(provider.media_hosts, settings.api_url)
        return await provider.fetch_media(event, MediaFetch(settings, self.fetcher, policy, self.workdir))

    async def _attempt(self, seq: int, event: dict[str, Any], media: dict[str, Any], source: str) -> None:
        retrieved = await self.retrieve(event, source)
        try:
            mime = bare_mime(media.get("mime_type")) or bare_mime(retrieved.content_type)
            key = object_key(source, received_day(event), retrieved.sha256, mime)
            stored = await self.store.put(retrieved.path, key, mime)
        finally:
            await asyncio.to_thread(retrieved.path.unlink, missing_ok=True)
        self.metrics.media_bytes.inc(retrieved.size)
        media.update(
            stored=stored,
            sha256=retrieved.sha256,
            size=retrieved.size,
            # The declared type wins (it is what the sender chose); else what the host said.
            mime_type=media.get("mime_type") or mime,
            filename=media.get("filename") or Path(key).name,
            error=None,
        )
        self.log.info("media_stored", source=source, seq=seq, key=key, size=retrieved.size)

    async def _complete(self, seq: int, event: dict[str, Any]) -> None:
        """Hand the event back; a journal hiccup is retried, never dropped."""
        delay = 0.5
        while True:
            try:
                await self.journal.complete_media(seq, event)
                self._finished[seq] = None
                while len(self._finished) > MAX_TRACKED:
                    self._finished.popitem(last=False)
                return
            except Exception as exc:
                self.log.error("media_complete_failed", seq=seq, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, COMPLETE_RETRY_MAX)

    def _count(self, source: str, outcome: str) -> None:
        self.metrics.media_downloads.labels(source=source, outcome=outcome).inc()


def installed_providers() -> dict[str, Provider]:
    """The providers of the built-in and installed plugins, as the daemon registers them."""
    from wahookd.plugins import collect, get_plugin_manager  # the registry imports the providers

    return collect(get_plugin_manager()).providers


def received_day(event: dict[str, Any]) -> date:
    """The UTC day the event was made durable (stable across retries and restarts)."""
    text = event.get("received_at")
    if isinstance(text, str):
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).date()
        except ValueError:
            pass
    return datetime.now(UTC).date()
