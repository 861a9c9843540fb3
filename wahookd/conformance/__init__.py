"""The sink conformance suite (SPEC §6), public as `wahookd.testing.SinkConformance`.

A plugin's test module subclasses `SinkConformance`, names its sink and says how to make a
fresh target and read back what it stored; pytest then runs every check below against the
real target, driving the sink through `wahookd.lifecycle.SinkHandle` exactly as the
daemon's delivery worker does (start once, deliver, flush before the position is recorded,
close once; a flush never runs beside a deliver).

Each check that a sink cannot pass fails with one sentence saying what to fix, and no
traceback. The promises checked:

- every kind and type of the event schema reads back field for field, as do unicode (NUL,
  emoji, every script), exact numbers in ``raw`` (``123456789012345678901234567890``,
  ``1e400``) and a 3 MB event;
- an event delivered twice (in one batch, after its flush, after a restart) is stored once;
- events delivered but not flushed, then a SIGKILL of the process, then the redelivery
  wahookd makes after a restart: nothing lost, nothing doubled;
- an unreachable target (``break_target``) raises a retryable error, not a permanent one,
  and after ``heal_target`` the retried deliveries are stored once (wahookd retries a
  failed delivery, and after a failed flush delivers the batch again, then flushes);
- a target that refuses events (``refuse_target``) gets them dead-lettered
  (`PermanentDeliveryError` from ``deliver``) and never acknowledged by a ``flush``;
- ``start`` and ``close`` run once per sink lifetime, and a new sink on the same target
  starts after the old one closed;
- ``concurrency`` deliveries at once store every event once;
- options are validated, with errors that name the key (``sinks.<name>.<key>: ...``).

Modules: `samples` (the events and the field-for-field comparison), `harness` (finding,
building and driving the sink; the process the kill check SIGKILLs), `checks` (one function
per check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from wahookd.conformance import checks
from wahookd.conformance.harness import Run
from wahookd.conformance.samples import EVENT_FIELDS, big_event, schema_events, unicode_events

__all__ = ["EVENT_FIELDS", "SinkConformance", "big_event", "schema_events", "unicode_events"]


class SinkConformance:
    """Subclass in a test module (named ``Test...``) to check a sink against the real target::

        from wahookd.events import load_json
        from wahookd.testing import SinkConformance

        class TestAcmeConformance(SinkConformance):
            plugin = "acme"  # the installed sink, as users write plugin = "acme"

            def options(self, tmp_path):
                self.out = tmp_path / "out.jsonl"
                return {"path": str(self.out)}  # a fresh, empty target for this test

            def read_back(self):
                return [load_json(line) for line in self.out.read_bytes().splitlines()]

    `options(tmp_path)` is called once per check, before anything else: keep on `self` what
    `read_back()` needs. Its options are validated by the sink's model, as a
    ``[sinks.conformance]`` table. `read_back()` (sync) returns every event the target holds,
    as dicts, repeats included; read JSON with `wahookd.events.load_json`, which keeps numbers
    exact.

    Optional, for the checks that need them (skipped, saying so, when absent):
    `break_target()` makes the target unreachable (`wahookd.testing.TcpProxy.cut` for a
    network service) and `heal_target()` brings it back; `refuse_target()` makes it refuse
    every event in a way retrying cannot help (a 410, a constraint), undone by `heal_target()`.

    `concurrency`: the most deliveries in flight the sink supports (its ``concurrency`` key);
    `call_timeout`: seconds any one call may take before the check fails.
    """

    plugin: ClassVar[str] = ""
    concurrency: ClassVar[int] = 8
    call_timeout: ClassVar[float] = 30.0

    def options(self, tmp_path: Path) -> dict[str, Any]:
        raise NotImplementedError(
            "define options(self, tmp_path): the sink's options for a fresh, empty target"
        )

    def read_back(self) -> list[dict[str, Any]]:
        raise NotImplementedError("define read_back(self): every event the target stored, as dicts")

    @pytest.fixture(autouse=True)
    def _close_proxies(self) -> Any:
        """A `TcpProxy` made during a check is closed after it."""
        from wahookd.testing import TcpProxy  # testing imports this module

        before = set(TcpProxy.live)
        yield
        for proxy in set(TcpProxy.live) - before:
            proxy.close()

    def test_options_reject_an_unknown_key_naming_it(self, tmp_path: Path) -> None:
        checks.options_unknown_key(Run(self, tmp_path))

    def test_invalid_option_values_are_errors_naming_the_key(self, tmp_path: Path) -> None:
        checks.options_invalid_values(Run(self, tmp_path))

    def test_every_kind_and_type_reads_back_field_for_field(self, tmp_path: Path) -> None:
        run = Run(self, tmp_path)
        run.run(lambda run: checks.roundtrip(run, schema_events(run.tag)))

    def test_unicode_and_exact_numbers_read_back_unchanged(self, tmp_path: Path) -> None:
        run = Run(self, tmp_path)
        run.run(lambda run: checks.roundtrip(run, unicode_events(run.tag)))

    def test_a_3_mb_event_reads_back_whole(self, tmp_path: Path) -> None:
        run = Run(self, tmp_path)
        advice = (
            "lift the size limit in the way (a message size, a column type), since wahookd "
            "accepts events up to server.max_body_bytes, 3 MiB by default"
        )
        run.run(lambda run: checks.roundtrip(run, [big_event(run.tag)], advice=advice))

    def test_an_event_delivered_twice_is_stored_once(self, tmp_path: Path) -> None:
        Run(self, tmp_path).run(checks.delivered_twice)

    def test_a_kill_before_flush_then_redelivery_loses_and_doubles_nothing(self, tmp_path: Path) -> None:
        checks.kill_and_redeliver(Run(self, tmp_path))

    def test_an_unreachable_target_raises_a_retryable_error(self, tmp_path: Path) -> None:
        Run(self, tmp_path).run(checks.unreachable)

    def test_after_an_outage_retried_deliveries_are_stored_once(self, tmp_path: Path) -> None:
        Run(self, tmp_path).run(checks.outage)

    def test_a_refused_event_is_dead_lettered(self, tmp_path: Path) -> None:
        Run(self, tmp_path).run(checks.refused_dead_lettered)

    def test_a_refused_batch_is_never_acknowledged(self, tmp_path: Path) -> None:
        Run(self, tmp_path).run(checks.refused_never_acknowledged)

    def test_start_and_close_are_called_once_each(self, tmp_path: Path) -> None:
        Run(self, tmp_path).run(checks.lifecycle)

    def test_concurrent_deliveries_store_every_event_once(self, tmp_path: Path) -> None:
        Run(self, tmp_path).run(checks.concurrent)
