"""The conformance suite run on the example sinks (written out as test_examples.py and run
by tests/test_conformance_suite.py in a child pytest; not collected here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wahookd.events import load_json
from wahookd.testing import SinkConformance


class ExampleConformance(SinkConformance):
    def options(self, tmp_path: Path) -> dict[str, Any]:
        self.directory = tmp_path / "target"
        return {"directory": str(self.directory)}

    def read_back(self) -> list[dict[str, Any]]:
        path = self.directory / "events.jsonl"
        return [load_json(line) for line in path.read_bytes().splitlines()] if path.exists() else []

    def break_target(self) -> None:
        self.directory.rename(self.directory.with_name("target.away"))
        self.directory.write_text("a file where the directory was\n")

    def heal_target(self) -> None:
        if self.directory.is_file():
            self.directory.unlink()
            self.directory.with_name("target.away").rename(self.directory)
        (self.directory / "REFUSE").unlink(missing_ok=True)

    def refuse_target(self) -> None:
        (self.directory / "REFUSE").touch()


class TestGood(ExampleConformance):
    plugin = "example_good"


class TestBroken(ExampleConformance):
    plugin = "example_broken"


class TestNotIdempotent(ExampleConformance):
    plugin = "example_not_idempotent"


class TestNotFlushing(ExampleConformance):
    plugin = "example_not_flushing"


class TestLossyNumbers(ExampleConformance):
    plugin = "example_lossy_numbers"


class TestStripsControls(ExampleConformance):
    plugin = "example_strips_controls"


class TestTruncating(ExampleConformance):
    plugin = "example_truncating"


class TestDownIsPermanent(ExampleConformance):
    plugin = "example_down_is_permanent"


class TestHangsWhenDown(ExampleConformance):
    plugin = "example_hangs_when_down"
    call_timeout = 2.0


class TestForgetsFailedBatch(ExampleConformance):
    plugin = "example_forgets_failed_batch"


class TestRefusesAtFlush(ExampleConformance):
    plugin = "example_refuses_at_flush"


class TestIgnoresRefusal(ExampleConformance):
    plugin = "example_ignores_refusal"


class TestRestartsItself(ExampleConformance):
    plugin = "example_restarts_itself"


class TestRacy(ExampleConformance):
    plugin = "example_racy"


class TestLaxOptions(ExampleConformance):
    plugin = "example_lax_options"


class TestUnnamedErrors(ExampleConformance):
    plugin = "example_unnamed_errors"


class TestNotInstalled(ExampleConformance):
    plugin = "example_nobody_installed"
