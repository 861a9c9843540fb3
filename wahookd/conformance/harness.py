"""How the conformance suite finds, builds and drives a sink: as the daemon does.

`Run` is one check's view of one fresh target: the installed `SinkSpec` (found through the
plugin manager, entry points included), the options from the test's ``options(tmp_path)``,
and `SinkHandle`s around the sinks it builds, every call guarded by a timeout.
`run_kill_child` is the process the kill check starts and SIGKILLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
import structlog
from pydantic import BaseModel, ValidationError

from wahookd.conformance.samples import brief, first_difference, label, short
from wahookd.errors import PluginError, WahookdError
from wahookd.events import load_json
from wahookd.hookspecs import Sink, SinkContext, SinkSpec
from wahookd.lifecycle import Failure, SinkHandle
from wahookd.settings import describe_errors

if TYPE_CHECKING:
    from wahookd.conformance import SinkConformance

SINK_NAME = "conformance"  # the [sinks.<name>] the suite's sinks run as
RECOVER_SECONDS = 15.0  # how long after heal_target() a sink may take to deliver again
KILL_CHILD = "import sys; from wahookd.conformance.harness import run_kill_child; run_kill_child(sys.argv[1])"


def fail(message: str) -> NoReturn:
    """Fail the check with `message` alone: the sentence is the whole report (no traceback,
    and no exception it was raised while handling, such as a timeout's)."""
    raise pytest.fail.Exception(message, pytrace=False) from None


@cache
def registry_sinks() -> dict[str, SinkSpec]:
    from wahookd.plugins import collect, get_plugin_manager  # pluggy only when used

    return collect(get_plugin_manager()).sinks


def find_sink_spec(plugin: str) -> SinkSpec | str:
    """The installed sink named `plugin`, found as the daemon finds it, or why not."""
    if not plugin:
        return 'set plugin = "<your sink\'s name>" on the test class, the name users write in plugin ='
    try:
        sinks = registry_sinks()
    except PluginError as exc:
        return f"the installed plugins cannot be loaded ({exc}): fix or uninstall the broken plugin"
    spec = sinks.get(plugin)
    if spec is None:
        installed = ", ".join(sorted(sinks)) or "none"
        return (
            f"no installed plugin provides a sink named {plugin!r} (installed: {installed}): install "
            "your distribution (pip install -e .) so wahookd finds it through its "
            "[project.entry-points.wahookd] entry point"
        )
    return spec


def make_sink(spec: SinkSpec, options: dict[str, Any], state_dir: Path) -> Sink:
    """Validate `options` and build the sink as the daemon does; problems raise `WahookdError`."""
    try:
        validated = spec.options.model_validate(options)
    except ValidationError as exc:
        raise WahookdError("; ".join(describe_errors(exc, prefix=("sinks", SINK_NAME)))) from None
    state_dir.mkdir(parents=True, exist_ok=True)
    context = SinkContext(
        name=SINK_NAME,
        state_dir=state_dir,
        durable=True,  # state.durability = "fsync", the default: flush() must make it durable
        log=structlog.get_logger("wahookd.sink").bind(sink=SINK_NAME),
    )
    return spec.factory(validated, context)


class Run:
    """One check's sinks on one fresh target: what the suite builds and drives."""

    def __init__(self, suite: SinkConformance, tmp_path: Path) -> None:
        self.suite = suite
        self.tmp_path = tmp_path
        found = find_sink_spec(suite.plugin)
        if isinstance(found, str):
            fail(found + ".")
        self.spec = found
        self.options = dict(suite.options(tmp_path))
        self.state_dir = tmp_path / "wahookd-state"
        self.tag = uuid.uuid4().hex[:8]
        self.timeout = suite.call_timeout
        self._open: list[SinkHandle] = []

    def build(self) -> Sink:
        try:
            return make_sink(self.spec, self.options, self.state_dir)
        except WahookdError as exc:
            fail(f"the sink refused the options from options() ({exc}): return options it accepts.")

    async def started(self, sink: Sink | None = None) -> SinkHandle:
        handle = SinkHandle(SINK_NAME, sink if sink is not None else self.build())
        failure = await self.attempt(handle, "start")
        if failure is not None:
            fail(f"start() failed against a healthy target ({brief(failure.error)}): fix that first.")
        self._open.append(handle)
        return handle

    async def close(self, handle: SinkHandle) -> None:
        self._open.remove(handle)
        failure = await self.attempt(handle, "close")
        if failure is not None:
            fail(f"close() failed ({brief(failure.error)}): close() must release the target without raising.")

    async def attempt(self, handle: SinkHandle, method: str, *args: Any) -> Failure | None:
        """One guarded call, as the daemon makes it; a call that hangs fails the check."""
        call: Callable[..., Awaitable[Failure | None]] = getattr(handle, method)
        try:
            return await asyncio.wait_for(call(*args), self.timeout)
        except TimeoutError:
            fail(
                f"{method}() did not return within {self.timeout:g} s: give every call to the "
                "target a timeout, so that a stuck target becomes a DeliveryError wahookd retries."
            )

    async def must(self, handle: SinkHandle, method: str, *args: Any, advice: str = "fix that first") -> None:
        failure = await self.attempt(handle, method, *args)
        if failure is not None:
            fail(f"{method}() failed against a healthy target ({brief(failure.error)}): {advice}.")

    async def deliver_and_flush(self, handle: SinkHandle, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            await self.must(handle, "deliver", event)
        await self.must(handle, "flush")

    async def until_ok(self, handle: SinkHandle, method: str, *args: Any) -> None:
        """Retry like wahookd after `heal_target()`, for up to `RECOVER_SECONDS`."""
        deadline = time.monotonic() + RECOVER_SECONDS
        while True:
            failure = await self.attempt(handle, method, *args)
            if failure is None:
                return
            if time.monotonic() > deadline:
                fail(
                    f"{method}() still failed {RECOVER_SECONDS:g} s after heal_target() "
                    f"({brief(failure.error)}): reconnect after an outage instead of reusing a broken "
                    "connection."
                )
            await asyncio.sleep(0.25)

    async def stored(self) -> dict[str, list[dict[str, Any]]]:
        """read_back(), by event id (a list: the copies the target holds)."""
        got = await asyncio.to_thread(self.suite.read_back)
        if not isinstance(got, list) or not all(isinstance(e, dict) and "id" in e for e in got):
            fail(
                f"read_back() returned {short(got)}: return a list of the stored events, as dicts with an id."
            )
        by_id: dict[str, list[dict[str, Any]]] = {}
        for event in got:
            by_id.setdefault(str(event["id"]), []).append(event)
        return by_id

    async def check_stored(
        self,
        events: list[dict[str, Any]],
        *,
        missing: str,
        doubled: str,
    ) -> None:
        """Each of `events` is stored exactly once and reads back field for field."""
        stored = await self.stored()
        for event in events:
            copies = stored.get(str(event["id"]), [])
            if not copies:
                fail(missing.format(label=label(event), id=event["id"]))
            if len(copies) > 1:
                fail(doubled.format(label=label(event), id=event["id"], n=len(copies)))
            found = first_difference(event, copies[0])
            if found:
                field, problem = found
                fail(f"the {label(event)} event's {field} {problem}.")

    def run(self, scenario: Callable[[Run], Awaitable[None]]) -> None:
        """Run `scenario` on a new event loop; sinks it left open are closed after it."""

        async def main() -> None:
            try:
                await scenario(self)
            finally:
                for handle in list(self._open):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(handle.close(), self.timeout)

        asyncio.run(main())

    def optional(self, *methods: str) -> list[Callable[[], Any]]:
        """The suite's optional target methods, or a skip saying how to enable the check."""
        found = [getattr(self.suite, name, None) for name in methods]
        if any(method is None for method in found):
            names = " and ".join(f"{name}()" for name in methods)
            them = "them" if len(methods) > 1 else "it"
            pytest.skip(f"{type(self.suite).__name__} defines no {names}: define {them} to run this check")
        return found  # type: ignore[return-value]


MISSING = (
    "the {label} event was delivered and flushed but read_back() does not return it: deliver() "
    "and flush() must store every event they are given."
)
TWICE = (
    "the {label} event was stored {n} times: make deliver() idempotent by event['id'] (an upsert "
    "by id, or skip ids the target already holds)."
)


def validation_lines(model: type[BaseModel], options: dict[str, Any], what: str) -> list[str] | None:
    """The daemon's error lines for `options`, or None when they validate."""
    try:
        model.model_validate(options)
    except ValidationError as exc:
        return describe_errors(exc, prefix=("sinks", SINK_NAME))
    except Exception as exc:  # a validator of the plugin's own that broke on the value
        fail(
            f"validating options with {what} raised {type(exc).__name__} ({exc}) instead of a validation "
            "error: check the value's type in the validator before using it, and raise ValueError."
        )
    return None


def read_line(child: subprocess.Popen[bytes], timeout: float) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    if not ready:
        return f"nothing within {timeout:g} s"
    return child.stdout.readline().decode(errors="replace").strip()


def run_kill_child(job_path: str) -> None:
    """The process the kill check SIGKILLs: start, deliver and flush the first batch,
    deliver the second, say so, and wait to be killed."""
    # The parent reads one line from our stdout; whatever else writes there (a sink's
    # logs, a print) goes to stderr instead.
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    def say(line: str) -> None:
        report.write(line + "\n")
        report.flush()

    job = json.loads(Path(job_path).read_text())
    found = find_sink_spec(job["plugin"])
    if isinstance(found, str):
        say(f"failed: {found}")
        return
    flushed = load_json(Path(job["flushed"]).read_bytes())
    unflushed = load_json(Path(job["unflushed"]).read_bytes())

    async def main() -> None:
        sink = make_sink(found, job["options"], Path(job["state_dir"]))
        handle = SinkHandle(SINK_NAME, sink)
        steps: list[tuple[str, tuple[Any, ...]]] = [("start", ())]
        steps += [("deliver", (event,)) for event in flushed]
        steps += [("flush", ())]
        steps += [("deliver", (event,)) for event in unflushed]
        for method, args in steps:
            failure = await asyncio.wait_for(getattr(handle, method)(*args), job["timeout"])
            if failure is not None:
                say(f"failed: {method}(): {brief(failure.error)}")
                return
        say("delivered")
        await asyncio.sleep(3600)  # the parent kills us here

    try:
        asyncio.run(main())
    except Exception as exc:  # reported to the parent, which fails the check with it
        say(f"failed: {type(exc).__name__}: {brief(str(exc))}")
