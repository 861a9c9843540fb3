"""Shared test fixtures: provider payloads, free ports, and the daemon as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonProcess:
    """`wahookd serve` as a real process on a free port, with its own state directory."""

    def __init__(self, workdir: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.state_dir = workdir / "state"
        self.config_path = workdir / "wahookd.toml"
        self.config_path.write_text(
            textwrap.dedent(
                f"""
                [server]
                listen = "127.0.0.1:{self.port}"
                drain_seconds = 10

                [state]
                dir = "{self.state_dir}"
                """
            )
            + textwrap.dedent(config)
        )
        self.env = {**os.environ, **(env or {})}
        self.env.pop("WAHOOKD_CONFIG", None)
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> DaemonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wahookd.cli", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[type]:
    """Build daemons: `daemon_factory(config_toml_text, env=None).start()`; all are killed after."""
    started: list[DaemonProcess] = []

    def make(config: str = "", env: dict[str, str] | None = None, workdir: Path | None = None):
        daemon = DaemonProcess(workdir or tmp_path, config, env)
        started.append(daemon)
        return daemon

    yield make  # type: ignore[misc]
    for daemon in started:
        daemon.kill()


# -- signing, done here independently of the providers' own code -----------------------


def wasender_headers(secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Webhook-Signature": secret}


def meta_headers(secret: str, body: bytes) -> dict[str, str]:
    import hashlib
    import hmac

    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


def wasender_body(message_id: str, text: str = "hello") -> bytes:
    import json

    return json.dumps(
        {
            "event": "messages.upsert",
            "timestamp": 1700000000,
            "data": {
                "messages": {
                    "key": {"id": message_id, "fromMe": False, "remoteJid": "1234567890@s.whatsapp.net"},
                    "pushName": "Test",
                    "messageTimestamp": 1700000000,
                    "message": {"conversation": text},
                }
            },
        }
    ).encode()
