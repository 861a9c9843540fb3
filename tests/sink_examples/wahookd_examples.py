"""Example sinks for the conformance suite's own tests: one that keeps every promise and
several that each break one, the way plugin authors get them wrong.

Installed by tests/test_conformance_suite.py as the distribution ``wahookd-examples`` (a
dist-info with a ``wahookd`` entry point on PYTHONPATH), so the suite finds them as it finds
any plugin. The target is a directory: ``events.jsonl`` holds the stored events, and while a
file named ``REFUSE`` is in it the target refuses every event (a stand-in for an HTTP 410).
File work is synchronous here: microseconds on a local disk, and the examples stay short.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wahookd import hookimpl
from wahookd.errors import DeliveryError, PermanentDeliveryError
from wahookd.events import ExactFloat, dump_json, load_json
from wahookd.hookspecs import SinkContext, SinkSpec


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: Path = Field(description="where events.jsonl is written")


class GoodSink:
    """Buffers in deliver(), appends and fsyncs in flush(), skips ids the file already has."""

    def __init__(self, options: Options, context: SinkContext) -> None:
        self.directory = options.directory
        self.path = self.directory / "events.jsonl"
        self.stored: set[str] = set()  # ids in the file
        self.buffer: dict[str, bytes] = {}  # delivered, not yet flushed

    def refusing(self) -> bool:
        return (self.directory / "REFUSE").exists()

    def check_refusal(self) -> None:
        if self.refusing():
            raise PermanentDeliveryError("the target refuses this event")

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.stored = {load_json(line)["id"] for line in self.path.read_bytes().splitlines()}

    async def deliver(self, event: dict[str, Any]) -> None:
        self.check_refusal()
        if event["id"] not in self.stored:
            self.buffer[event["id"]] = self.line(event)

    def line(self, event: dict[str, Any]) -> bytes:
        return dump_json(event) + b"\n"

    async def flush(self) -> None:
        if not self.buffer:
            return
        try:
            self.append(b"".join(self.buffer.values()))
        except OSError as exc:
            raise DeliveryError(f"cannot write {self.path}: {exc.strerror}") from None
        self.stored.update(self.buffer)
        self.buffer.clear()

    def append(self, data: bytes) -> None:
        with self.path.open("ab") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())


class BrokenSink(GoodSink):
    """Not idempotent and not flushing: keeps every delivery in memory, writes at close()."""

    async def deliver(self, event: dict[str, Any]) -> None:
        self.lines = [*getattr(self, "lines", []), self.line(event)]

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        self.append(b"".join(getattr(self, "lines", [])))


class NotIdempotentSink(GoodSink):
    async def deliver(self, event: dict[str, Any]) -> None:
        self.check_refusal()
        self.buffer[f"{event['id']}#{len(self.buffer)}"] = self.line(event)  # every copy kept


class NotFlushingSink(GoodSink):
    """Idempotent, but writes only at close(): a kill loses what flush() claimed."""

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        await GoodSink.flush(self)


class LossyNumbersSink(GoodSink):
    """Numbers through floats, as a JavaScript consumer or a float column would."""

    def line(self, event: dict[str, Any]) -> bytes:
        def as_float(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: as_float(item) for key, item in value.items()}
            if isinstance(value, list):
                return [as_float(item) for item in value]
            if isinstance(value, ExactFloat) or (type(value) is int and abs(value) > 2**53):
                return float(value)
            return value

        return json.dumps(as_float(event)).encode() + b"\n"


class StripsControlsSink(GoodSink):
    """Drops NUL and other control characters from text, as many stores quietly do."""

    def line(self, event: dict[str, Any]) -> bytes:
        text = event.get("text")
        if isinstance(text, str):
            event = {**event, "text": "".join(c for c in text if c >= " " or c in "\n\t")}
        return super().line(event)


class TruncatingSink(GoodSink):
    """Cuts strings at 1 MiB, as a column or message size limit would."""

    def line(self, event: dict[str, Any]) -> bytes:
        def cut(value: Any) -> Any:
            if isinstance(value, str):
                return value[: 1024 * 1024]
            if isinstance(value, dict):
                return {key: cut(item) for key, item in value.items()}
            if isinstance(value, list):
                return [cut(item) for item in value]
            return value

        return super().line(cut(event))


class DownIsPermanentSink(GoodSink):
    async def flush(self) -> None:
        try:
            await GoodSink.flush(self)
        except DeliveryError as exc:
            raise PermanentDeliveryError(str(exc)) from None


class HangsWhenDownSink(GoodSink):
    async def flush(self) -> None:
        if not self.directory.is_dir():
            await asyncio.sleep(3600)  # a client without a timeout
        await GoodSink.flush(self)


class ForgetsFailedBatchSink(GoodSink):
    """Drops a batch whose flush failed, and skips the ids it has seen in memory (not those
    the target holds): the events delivered again after the outage are skipped, and lost."""

    async def deliver(self, event: dict[str, Any]) -> None:
        self.check_refusal()
        if event["id"] in self.seen:
            return
        self.seen.add(event["id"])
        await GoodSink.deliver(self, event)

    async def flush(self) -> None:
        try:
            await GoodSink.flush(self)
        except DeliveryError:
            self.buffer.clear()  # "it failed, so it is gone"
            raise

    @property
    def seen(self) -> set[str]:
        self.__dict__.setdefault("_seen", set())
        return self.__dict__["_seen"]


class RefusesAtFlushSink(GoodSink):
    """Finds the refusal only when it writes: PermanentDeliveryError from flush()."""

    async def deliver(self, event: dict[str, Any]) -> None:
        if event["id"] not in self.stored:
            self.buffer[event["id"]] = self.line(event)

    async def flush(self) -> None:
        if self.buffer and self.refusing():
            raise PermanentDeliveryError("the target refuses this batch")
        await GoodSink.flush(self)


class IgnoresRefusalSink(RefusesAtFlushSink):
    """Discards what the target refuses and reports success, as a client that ignores the
    target's per-item errors does."""

    async def flush(self) -> None:
        if self.buffer and self.refusing():
            self.buffer.clear()
            return
        await GoodSink.flush(self)


class RestartsItselfSink(GoodSink):
    async def flush(self) -> None:
        await GoodSink.flush(self)
        await self.close()  # "reconnect" after every batch
        await self.start()

    async def close(self) -> None:
        pass


class RacySink(GoodSink):
    """Checks for the id, awaits, then writes: two concurrent copies both pass the check."""

    async def deliver(self, event: dict[str, Any]) -> None:
        self.check_refusal()
        if event["id"] in self.stored or event["id"] in self.seen:
            return
        await asyncio.sleep(0.001)  # a round trip to the target
        self.seen.add(event["id"])
        self.buffer[f"{event['id']}#{len(self.buffer)}"] = self.line(event)

    @property
    def seen(self) -> set[str]:
        self.__dict__.setdefault("_seen", set())
        return self.__dict__["_seen"]


class LaxOptions(BaseModel):
    directory: Path = Field(description="where events.jsonl is written")  # no extra="forbid"


class UnnamedErrorOptions(Options):
    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data.get("directory"), str):
            raise ValueError("the directory must be text")  # names no key
        return data


SINKS = {
    "example_good": (Options, GoodSink),
    "example_broken": (Options, BrokenSink),
    "example_not_idempotent": (Options, NotIdempotentSink),
    "example_not_flushing": (Options, NotFlushingSink),
    "example_lossy_numbers": (Options, LossyNumbersSink),
    "example_strips_controls": (Options, StripsControlsSink),
    "example_truncating": (Options, TruncatingSink),
    "example_down_is_permanent": (Options, DownIsPermanentSink),
    "example_hangs_when_down": (Options, HangsWhenDownSink),
    "example_forgets_failed_batch": (Options, ForgetsFailedBatchSink),
    "example_refuses_at_flush": (Options, RefusesAtFlushSink),
    "example_ignores_refusal": (Options, IgnoresRefusalSink),
    "example_restarts_itself": (Options, RestartsItselfSink),
    "example_racy": (Options, RacySink),
    "example_lax_options": (LaxOptions, GoodSink),
    "example_unnamed_errors": (UnnamedErrorOptions, GoodSink),
}


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(name, options, factory, "a conformance example")
        for name, (options, factory) in SINKS.items()
    ]
