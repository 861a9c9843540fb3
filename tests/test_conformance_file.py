"""The built-in `file` sink passes the conformance suite (SPEC §6) against a real file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wahookd.events import load_json
from wahookd.testing import SinkConformance


class TestFileSinkConformance(SinkConformance):
    plugin = "file"

    def options(self, tmp_path: Path) -> dict[str, Any]:
        self.directory = tmp_path / "archive"
        self.path = self.directory / "events.jsonl"
        return {"path": str(self.path)}

    def read_back(self) -> list[dict[str, Any]]:
        files = [*sorted(self.directory.glob("events.jsonl.*"), reverse=True), self.path]
        return [load_json(line) for file in files if file.exists() for line in file.read_bytes().splitlines()]

    # The directory gives way to a plain file: every open() under it fails, as on a lost mount.
    def break_target(self) -> None:
        self.directory.rename(self.directory.with_name("archive.away"))
        self.directory.write_text("not a directory\n")

    def heal_target(self) -> None:
        self.directory.unlink()
        self.directory.with_name("archive.away").rename(self.directory)
