"""`wahookd send-test` as a process against the daemon as a process, for every provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROVIDERS = ["wasender", "meta", "twilio", "waha", "evolution", "standard"]
SECRETS = {
    "wasender": "wasender-webhook-secret",
    "meta": "meta-app-secret",
    "twilio": "twilio-auth-token",
    "waha": "waha-hmac-key",
    "evolution": "evolution-token",
    "standard": "whsec_c2VuZC10ZXN0LXNlY3JldC1ieXRlcw==",
}


def sources_toml(secrets: dict[str, str], extra: dict[str, str] | None = None) -> str:
    lines = ["[ratelimit]", "rate = 10000", "burst = 10000", ""]
    for provider in PROVIDERS:
        lines += [f"[sources.{provider}]", f'provider = "{provider}"', f'secret = "{secrets[provider]}"']
        if extra and provider in extra:
            lines.append(extra[provider])
        lines.append("")
    return "\n".join(lines)


def send_test(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("WAHOOKD_")}
    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "send-test", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def delivered_events(daemon, want: int, timeout: float = 15.0) -> list[dict]:
    path = daemon.state_dir / "events.jsonl"
    deadline = time.monotonic() + timeout
    events: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if len(events) >= want:
                return events
        time.sleep(0.1)
    raise AssertionError(f"{len(events)} of {want} events delivered:\n{daemon.log()[-3000:]}")


@pytest.fixture
def daemon(daemon_factory):
    public = 'public_url = "https://hooks.example.com/webhooks/twilio"'
    return daemon_factory(sources_toml(SECRETS, {"twilio": public})).start()


def test_send_test_reaches_the_daemon_for_every_provider_and_kind(daemon) -> None:
    sent = 0
    for provider in PROVIDERS:
        for kind in ("text", "image", "status"):
            result = send_test(daemon.config_path, "--source", provider, "--kind", kind)
            assert result.returncode == 0, (provider, kind, result.stdout, result.stderr)
            assert result.stdout.startswith("200 "), result.stdout
            if provider == "twilio":
                assert "<Response/>" in result.stdout
            else:
                assert json.loads(result.stdout.split("\n", 1)[1]) == {"accepted": 1, "duplicates": 0}
            sent += 1
    events = delivered_events(daemon, sent)
    seen = {(event["provider"], event["kind"], event["type"]) for event in events}
    for provider in PROVIDERS:
        assert (provider, "message", "text") in seen
        assert (provider, "message", "image") in seen
        assert (provider, "status", None) in seen
    # Fresh ids every time: a second run is a new event, not a duplicate.
    again = send_test(daemon.config_path, "--source", "meta", "--kind", "text")
    assert json.loads(again.stdout.split("\n", 1)[1]) == {"accepted": 1, "duplicates": 0}


def test_send_test_with_the_wrong_secret_gets_401_and_exits_1(daemon, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(sources_toml({name: secret + "x" for name, secret in SECRETS.items()}))
    for provider in PROVIDERS:
        result = send_test(wrong, "--source", provider, "--url", f"{daemon.url}/webhooks/{provider}")
        assert result.returncode == 1, (provider, result.stdout)
        assert result.stdout.startswith("401 "), result.stdout


def test_send_test_to_an_unknown_source_is_an_operator_error(tmp_path: Path) -> None:
    config = tmp_path / "wahookd.toml"
    config.write_text(sources_toml(SECRETS))
    result = send_test(config, "--source", "nope")
    assert result.returncode == 1
    assert result.stderr.startswith("wahookd: error: unknown source 'nope'")
    assert "Traceback" not in result.stderr


def test_send_test_to_nothing_listening_is_an_operator_error(tmp_path: Path) -> None:
    from tests.conftest import free_port  # a port nobody listens on

    config = tmp_path / "wahookd.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n' + sources_toml(SECRETS))
    result = send_test(config, "--source", "meta")
    assert result.returncode == 1
    assert result.stderr.startswith("wahookd: error: cannot reach http://127.0.0.1:")
