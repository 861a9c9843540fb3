"""`wahookd new-sink NAME [--dir D]` writes a distribution that installs, passes its own
conformance tests unchanged, is listed by `wahookd plugins`, and a daemon delivers to it."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).with_name("ruff")


def wahookd(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_a_new_sink_installs_passes_its_own_tests_is_listed_and_receives_events(
    tmp_path: Path, daemon_factory: Any
) -> None:
    from tests.conftest import wasender_body, wasender_headers

    done = wahookd("new-sink", "acme", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    dist = tmp_path / "wahookd-acme"
    assert f"wrote {dist}" in done.stdout
    assert sorted(str(p.relative_to(dist)) for p in dist.rglob("*") if p.is_file()) == [
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "tests/test_conformance.py",
        "wahookd_acme/__init__.py",
    ]
    project = tomllib.loads((dist / "pyproject.toml").read_text())
    assert project["project"]["name"] == "wahookd-acme"
    assert project["project"]["entry-points"]["wahookd"] == {"acme": "wahookd_acme"}

    # Installed as a user would (pip, build isolation), into a directory of its own.
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(dist)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {"PYTHONPATH": str(site)}

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=dist,
        env={**os.environ, **env},
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "11 passed, 2 skipped" in tests.stdout
    assert "defines no refuse_target(): define it to run this check" in tests.stdout

    listed = wahookd("plugins", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "acme  [wahookd-acme 0.1.0 (entry point)]" in listed.stdout
    assert "  sink acme: store each event as a JSON file" in listed.stdout

    pytest.importorskip("wahookd.providers.wasender", reason="the wasender provider is not merged yet")
    events = tmp_path / "acme-events"
    daemon = daemon_factory(
        '[sources.shop]\nprovider = "wasender"\nsecret = "s"\n\n'
        f'[sinks.mine]\nplugin = "acme"\ndirectory = "{events}"\n',
        env=env,
    ).start()
    for message_id in ("3EBACME01", "3EBACME02", "3EBACME01"):  # the repeat creates nothing
        request = urllib.request.Request(
            daemon.url + "/webhooks/shop",
            data=wasender_body(message_id),
            headers=wasender_headers("s"),
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
    deadline = time.monotonic() + 15
    while len(list(events.glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.stop() == 0
    stored = sorted(json.loads(path.read_bytes())["message_id"] for path in events.glob("*.json"))
    assert stored == ["3EBACME01", "3EBACME02"]


def test_the_generated_code_is_clean_and_names_follow_the_sink_name(tmp_path: Path) -> None:
    done = wahookd("new-sink", "acme-crm", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    dist = tmp_path / "wahookd-acme-crm"
    module = (dist / "wahookd_acme_crm" / "__init__.py").read_text()
    assert "class AcmeCrmOptions(BaseModel)" in module
    assert 'SinkSpec("acme-crm", AcmeCrmOptions, AcmeCrmSink,' in module
    assert (
        "class TestAcmeCrmConformance(SinkConformance)"
        in (dist / "tests" / "test_conformance.py").read_text()
    )
    assert 'acme-crm = "wahookd_acme_crm"' in (dist / "pyproject.toml").read_text()
    compile(module, "wahookd_acme_crm/__init__.py", "exec")
    if RUFF.exists():  # as a plugin project would lint it: wahookd is a third-party import there
        lint = [str(RUFF), "check", "--isolated", "--select", "E,F,W,I,B,UP,SIM,RUF", "--line-length", "110"]
        checked = subprocess.run([*lint, "."], capture_output=True, text=True, timeout=60, cwd=dist)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        formatted = subprocess.run(
            [str(RUFF), "format", "--isolated", "--line-length", "110", "--check", "."],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=dist,
        )
        assert formatted.returncode == 0, formatted.stdout + formatted.stderr


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Acme", "new-sink: 'Acme' is not a sink name: lowercase letters and digits"),
        ("acme crm", "new-sink: 'acme crm' is not a sink name"),
        ("1acme", "new-sink: '1acme' is not a sink name"),
        ("acme--crm", "new-sink: 'acme--crm' is not a sink name"),
        ("file", "new-sink: a sink named 'file' already exists (wahookd.sinks.file)"),
    ],
)
def test_new_sink_refuses_a_bad_or_taken_name_in_one_line(tmp_path: Path, name: str, says: str) -> None:
    done = wahookd("new-sink", name, "--dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith(f"wahookd: error: {says}")
    assert done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_new_sink_never_overwrites_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "wahookd-acme").mkdir()
    (tmp_path / "wahookd-acme" / "mine.py").write_text("# someone's work\n")
    done = wahookd("new-sink", "acme", "--dir", str(tmp_path))
    assert done.returncode == 1
    existing = tmp_path / "wahookd-acme"
    assert done.stderr.startswith(f"wahookd: error: new-sink: {existing} already exists; remove it")
    assert [p.name for p in (tmp_path / "wahookd-acme").iterdir()] == ["mine.py"]


def test_the_templates_ship_as_package_data() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    templates = [
        str(p.relative_to(ROOT / "wahookd"))
        for p in (ROOT / "wahookd" / "templates").rglob("*")
        if p.is_file()
    ]
    assert templates
    for template in templates:
        assert any(fnmatch.fnmatch(template, pattern) for pattern in package_data["wahookd"]), template
