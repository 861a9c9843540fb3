"""The conformance checks: each drives the sink like the delivery worker and fails with one
sentence saying what to fix (see `wahookd.conformance` for the promises)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import warnings
from typing import Any

from wahookd.conformance.harness import (
    KILL_CHILD,
    MISSING,
    SINK_NAME,
    TWICE,
    Run,
    fail,
    read_line,
    validation_lines,
)
from wahookd.conformance.samples import brief, label, schema_events, unicode_events
from wahookd.errors import DeliveryError
from wahookd.events import dump_json
from wahookd.hookspecs import Sink
from wahookd.lifecycle import Failure, SinkHandle


async def roundtrip(run: Run, events: list[dict[str, Any]], *, advice: str = "fix that first") -> None:
    handle = await run.started()
    for event in events:
        await run.must(handle, "deliver", event, advice=advice)
    await run.must(handle, "flush", advice=advice)
    await run.close(handle)
    await run.check_stored(events, missing=MISSING, doubled=TWICE)


async def delivered_twice(run: Run) -> None:
    first, second = schema_events(run.tag)[:2]
    handle = await run.started()
    for event in (first, first, second):
        await run.must(handle, "deliver", event)
    await run.must(handle, "flush")
    await run.check_stored(
        [first, second],
        missing=MISSING,
        doubled="delivering one event twice before a flush stored it {n} times: make deliver() "
        "idempotent by event['id'] (an upsert by id, or skip ids already delivered).",
    )
    await run.deliver_and_flush(handle, [first])
    await run.check_stored(
        [first, second],
        missing="delivering the {label} event again after its flush removed it: a repeat must leave "
        "the stored event in place.",
        doubled="delivering an event again after its flush stored it again: make deliver() idempotent "
        "by event['id'] across flushes, not only within one batch.",
    )
    await run.close(handle)
    restarted = await run.started()  # wahookd restarted: the same events come again
    await run.deliver_and_flush(restarted, [first, second])
    await run.close(restarted)
    await run.check_stored(
        [first, second],
        missing="delivering the {label} event again after a restart removed it: a repeat must leave "
        "the stored event in place.",
        doubled="a new sink instance (a restart) stored an event it had stored before: keep what makes "
        "deliver() idempotent in the target (an upsert, or ids read from the target at start()), "
        "not in memory.",
    )


def kill_and_redeliver(run: Run) -> None:
    events = schema_events(run.tag)
    flushed, unflushed = events[:8], events[8:16]
    work = run.tmp_path / "kill-child"
    work.mkdir()
    (work / "flushed.json").write_bytes(dump_json(flushed))
    (work / "unflushed.json").write_bytes(dump_json(unflushed))
    job = {
        "plugin": run.suite.plugin,
        "options": run.options,
        "state_dir": str(run.state_dir),
        "flushed": str(work / "flushed.json"),
        "unflushed": str(work / "unflushed.json"),
        "timeout": run.timeout,
    }
    (work / "job.json").write_text(json.dumps(job, default=str))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    with (work / "stderr.log").open("wb") as errors:
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(work / "job.json")],
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
        )
        try:
            line = read_line(child, run.timeout * 2 + 30)
            if line != "delivered":
                detail = line or (work / "stderr.log").read_text(errors="replace").strip()[-500:]
                fail(
                    f"the sink failed in a fresh process before the kill ({detail or 'no output'}): "
                    "it must build, start and deliver from its options alone."
                )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
            assert child.stdout is not None
            child.stdout.close()

    async def restart(run: Run) -> None:
        # wahookd restarts and delivers again every event after the position it recorded,
        # which the last flush made; a kill between that flush and the recording repeats
        # the end of the flushed batch too.
        handle = await run.started()
        await run.deliver_and_flush(handle, [*flushed[-2:], *unflushed])
        await run.close(handle)
        stored = await run.stored()
        for event in flushed:
            if not stored.get(str(event["id"])):
                fail(
                    f"the {label(event)} event, flushed before the kill, was lost: flush() must write "
                    "every delivered event to the target before it returns, because wahookd records "
                    "the sink's position right after it."
                )
        await run.check_stored(
            unflushed,
            missing="the {label} event, delivered again after the kill, is missing: count an event as "
            "stored only once the target holds it (not when it is in memory or in a list of seen ids).",
            doubled="the {label} event, delivered again after the kill, was stored {n} times: make "
            "deliver() idempotent by event['id'] in the target itself (an upsert, or the ids it holds "
            "read at start()), because memory does not survive a kill.",
        )
        await run.check_stored(
            flushed,
            missing=MISSING,
            doubled="the {label} event was stored {n} times after being delivered again past its flush: "
            "make deliver() idempotent by event['id'] in the target itself, because memory does not "
            "survive a kill.",
        )

    run.run(restart)


NOTHING_FAILED = (
    "neither deliver() nor flush() failed while the target was broken (break_target()): the sink "
    "acknowledged events the target cannot have stored, so let the target's errors reach wahookd "
    "as DeliveryError."
)


def check_retryable(failure: Failure, where: str) -> None:
    if failure.permanent:
        fail(
            f"{where} raised PermanentDeliveryError ({brief(failure.error)}) while the target was "
            "unreachable, which dead-letters the event: raise DeliveryError for failures that pass "
            "(a refused connection, a timeout, a 5xx)."
        )
    if not isinstance(failure.exception, DeliveryError):
        # Retried all the same (any exception means "retry later"), but logged as a plugin bug.
        warnings.warn(
            f"{where} raised {brief(failure.error)} for an unreachable target: catch the client's "
            "errors and raise wahookd.errors.DeliveryError, so wahookd logs one line instead of a "
            "plugin bug's traceback",
            stacklevel=1,
        )


async def unreachable(run: Run) -> None:
    break_target, heal_target = run.optional("break_target", "heal_target")
    handle = await run.started()
    events = schema_events(run.tag)
    await run.deliver_and_flush(handle, events[:1])  # connected, pools warm
    await asyncio.to_thread(break_target)
    try:
        where = "deliver()"
        failure = await run.attempt(handle, "deliver", events[1])
        if failure is None:
            where = "flush()"
            failure = await run.attempt(handle, "flush")
        if failure is None:
            fail(NOTHING_FAILED)
        check_retryable(failure, where)
    finally:
        await asyncio.to_thread(heal_target)


async def outage(run: Run) -> None:
    break_target, heal_target = run.optional("break_target", "heal_target")
    handle = await run.started()
    warm, *events = schema_events(run.tag)[:3]
    await run.deliver_and_flush(handle, [warm])
    await asyncio.to_thread(break_target)
    failed: list[dict[str, Any]] = []
    flush_failed = False
    try:
        for event in events:
            failure = await run.attempt(handle, "deliver", event)
            if failure is not None:
                check_retryable(failure, "deliver()")
                failed.append(event)
        if len(failed) < len(events):
            failure = await run.attempt(handle, "flush")
            flush_failed = failure is not None
            if failure is not None:
                check_retryable(failure, "flush()")
    finally:
        await asyncio.to_thread(heal_target)
    if not failed and not flush_failed:
        fail(NOTHING_FAILED)
    # As wahookd goes on after the outage: a failed delivery is retried until it succeeds,
    # and after a failed flush every event since the recorded position is delivered again,
    # then flushed (at any concurrency); a flush that fails again starts that over.
    for _round in range(3):
        for event in events:
            await run.until_ok(handle, "deliver", event)
        failure = await run.attempt(handle, "flush")
        if failure is None:
            break
        await asyncio.sleep(1.0)
    else:
        fail(
            f"flush() still failed after heal_target(), with the batch delivered again three times "
            f"({brief(failure.error)}): reconnect after an outage instead of reusing a broken connection."
        )
    lost = (
        "the {label} event is missing although, after the outage, wahookd delivered it again and "
        "flush() then succeeded: a flush() that succeeds must have stored every event delivered "
        "since the previous flush() call."
        if flush_failed
        else "the {label} event, whose delivery failed during the outage, is missing after its "
        "successful retry: a retried deliver() must store the event."
    )
    await run.check_stored(
        events,
        missing=lost,
        doubled="the {label} event was stored {n} times after the outage: a retry after a failure "
        "must not store an event twice.",
    )
    # As wahookd retries with concurrency = 1: the batch again from the recorded position.
    await run.deliver_and_flush(handle, events)
    await run.close(handle)
    await run.check_stored(
        events,
        missing=MISSING,
        doubled="delivering a batch again after a failed flush stored the {label} event {n} times: "
        "make deliver() idempotent by event['id'] (wahookd delivers the batch again from its "
        "recorded position).",
    )


async def refused_dead_lettered(run: Run) -> None:
    (refuse_target,) = run.optional("refuse_target")
    heal_target = getattr(run.suite, "heal_target", None)
    handle = await run.started()
    events = schema_events(run.tag)
    await run.deliver_and_flush(handle, events[:1])
    await asyncio.to_thread(refuse_target)
    try:
        for batch in (events[1:2], events[2:4]):  # a batch of one event, then of two
            pending = list(batch)
            acknowledged = False
            error = ""
            for _round in range(3):  # wahookd (concurrency = 1) delivers the batch again
                for event in list(pending):
                    for _attempt in range(3):  # then max_attempts dead-letters it anyway
                        failure = await run.attempt(handle, "deliver", event)
                        if failure is None:
                            break
                        error = failure.error
                        if failure.permanent:
                            break
                    if failure is not None:
                        pending.remove(event)  # dead-lettered
                failure = await run.attempt(handle, "flush")
                if failure is None:
                    acknowledged = bool(pending)
                    break
                error = failure.error
            if acknowledged:
                fail(
                    "flush() returned success for events the target refused (refuse_target()): an "
                    "event the target did not store must fail, from deliver() with "
                    "PermanentDeliveryError."
                )
            if pending:
                fail(
                    f"the target refused a batch of {len(batch)} through 3 deliveries of it, failing "
                    f"only in flush() ({brief(error)}): raise PermanentDeliveryError from deliver() "
                    "for an event the target will never take, because wahookd retries a failed "
                    "flush() forever and never dead-letters it."
                )
    finally:
        if heal_target is not None:
            await asyncio.to_thread(heal_target)


async def refused_never_acknowledged(run: Run) -> None:
    (refuse_target,) = run.optional("refuse_target")
    heal_target = getattr(run.suite, "heal_target", None)
    handle = await run.started()
    events = schema_events(run.tag)
    await run.deliver_and_flush(handle, events[:1])
    await asyncio.to_thread(refuse_target)
    try:
        buffered = [e for e in events[1:3] if await run.attempt(handle, "deliver", e) is None]
        if not buffered:
            return  # refused at deliver(): dead-lettered, nothing to acknowledge
        if await run.attempt(handle, "flush") is None:
            fail(
                "flush() returned success for events the target refused (refuse_target()): an "
                "event the target did not store must fail, from deliver() with PermanentDeliveryError."
            )
    finally:
        if heal_target is not None:
            await asyncio.to_thread(heal_target)


def count_calls(sink: Sink, counts: dict[str, int]) -> None:
    """Count calls of `start` and `close` on the instance, also the sink's own calls."""
    for method in ("start", "close"):
        original = getattr(sink, method, None)
        if original is None:
            continue
        counts[method] = 0

        def counted(*args: Any, _original: Any = original, _method: str = method) -> Any:
            counts[_method] += 1
            return _original(*args)

        try:
            setattr(sink, method, counted)
        except (AttributeError, TypeError):
            counts.pop(method)  # __slots__: cannot count, the check trusts the handle


async def lifecycle(run: Run) -> None:
    events = schema_events(run.tag)
    sink = run.build()
    counts: dict[str, int] = {}
    count_calls(sink, counts)
    handle = await run.started(sink)
    for start in range(0, 9, 3):  # several batches in one lifetime
        await run.deliver_and_flush(handle, events[start : start + 3])
    await run.close(handle)
    for method, calls in counts.items():
        if calls != 1:
            fail(
                f"{method}() ran {calls} times in one sink lifetime, in which wahookd calls it once: "
                f"do not call {method}() from the sink's other methods (open connections once in "
                "start(), release them once in close())."
            )
    await run.check_stored(
        events[:9],
        missing="the {label} event, delivered in a later batch of one sink lifetime, is missing: keep "
        "the sink usable between start() and close() (flush() must not close what deliver() needs).",
        doubled=TWICE,
    )
    second = run.build()
    handle = SinkHandle(SINK_NAME, second)
    failure = await run.attempt(handle, "start")
    if failure is not None:
        fail(
            f"a new sink on the same target could not start after the first one closed "
            f"({brief(failure.error)}): release what the sink holds (connections, locks, files) in close()."
        )
    run._open.append(handle)
    await run.deliver_and_flush(handle, events[9:10])
    await run.close(handle)
    await run.check_stored(events[:10], missing=MISSING, doubled=TWICE)


async def concurrent(run: Run) -> None:
    limit = run.suite.concurrency
    events = schema_events(run.tag) + unicode_events(run.tag)
    order: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        order.append(event)
        if index % 7 == 0:  # twice at once, as a replay beside the worker would
            order.append(event)
    handle = await run.started()
    gate = asyncio.Semaphore(limit)
    problems: list[str] = []

    async def deliver(event: dict[str, Any]) -> None:
        async with gate:
            failure = None
            for _attempt in range(3):
                failure = await run.attempt(handle, "deliver", event)
                if failure is None:
                    return
                await asyncio.sleep(0.05)
            assert failure is not None
            problems.append(failure.error)

    for start in range(0, len(order), 24):  # a flush never runs beside deliveries
        await asyncio.gather(*(deliver(event) for event in order[start : start + 24]))
        if problems:
            fail(
                f"deliver() failed with {limit} deliveries at once ({brief(problems[0])}): make "
                "deliver() safe to run concurrently (a pool, not one shared connection), or set a "
                "lower concurrency on this test class and tell users to keep the sink at it."
            )
        await run.must(handle, "flush")
    await run.close(handle)
    await run.check_stored(
        events,
        missing=MISSING,
        doubled=f"with {limit} deliveries at once the {{label}} event was stored {{n}} times: make the "
        "check for an id and the write of its event one atomic step (an upsert, a conditional "
        "insert), or set a lower concurrency on this test class and tell users to keep it.",
    )


# Values a TOML table can hold that most option types refuse (tried in turn until one is).
INVALID_VALUES: tuple[Any, ...] = ({"wahookd_conformance": "a table"}, [{"a": 1}], "\u0000 not valid", -1)


def options_unknown_key(run: Run) -> None:
    model = run.spec.options
    if (lines := validation_lines(model, run.options, "the test's own options")) is not None:
        fail(f"the options from options() do not validate ({'; '.join(lines)}): return valid options.")
    key = "no_such_option"
    lines = validation_lines(model, {**run.options, key: "conformance"}, f"an unknown key {key!r}")
    if lines is None:
        fail(
            f"an unknown option {key!r} was accepted silently: set model_config = "
            'ConfigDict(extra="forbid") on the options model, so a misspelled key is an error naming it.'
        )
    if not any(line.startswith(f"sinks.{SINK_NAME}.{key}:") for line in lines):
        fail(
            f"an unknown option {key!r} gave {lines}, which does not name it: leave the check to "
            'pydantic (extra="forbid") rather than a model validator of your own.'
        )


def options_invalid_values(run: Run) -> None:
    model = run.spec.options
    for name, field in model.model_fields.items():
        key = field.alias or name
        prefix = f"sinks.{SINK_NAME}.{key}"
        if field.is_required() and key in run.options:
            without = {k: v for k, v in run.options.items() if k != key}
            lines = validation_lines(model, without, f"the required option {key!r} left out")
            if lines is not None and not any(line.startswith(prefix) for line in lines):
                fail(
                    f"leaving out the required option {key!r} gave {lines}, which does not name it: "
                    "raise errors from field validators so wahookd can report sinks.<name>.<key>."
                )
        for value in INVALID_VALUES:
            lines = validation_lines(model, {**run.options, key: value}, f"{key} = {value!r}")
            if lines is None:
                continue  # this type takes it; try a value it refuses
            if not any(line.startswith(prefix) for line in lines):
                fail(
                    f"setting option {key!r} to {value!r} was refused with {lines}, which does not name "
                    "it: raise errors from field validators (or use a typed field), so wahookd can report "
                    "sinks.<name>.<key>."
                )
            break
