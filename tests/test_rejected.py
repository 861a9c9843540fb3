"""The rejected store never keeps a credential, and keeps what it keeps private (0600 in 0700)."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from wahookd.rejected import RejectedStore, redact
from wahookd.settings import SourceSettings

TOKEN = 'evo-token/ä"7Q'  # a slash, a non-ASCII letter and a quote: escaped in JSON
INSTANCE_KEY = "B6D711FCDE4D4FD5936544120E713976"  # Evolution's per-instance API key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def kept(directory: Path) -> tuple[bytes, str]:
    [body] = directory.glob("*.body")
    [note] = directory.glob("*.json")
    return body.read_bytes(), note.read_text()


@pytest.mark.parametrize(
    "body",
    [
        # Evolution's envelope: the shared token in `apikey`, a body that fails to parse.
        json.dumps({"apikey": TOKEN, "instance": "shop", "data": {}}).encode(),
        json.dumps({"apikey": TOKEN, "instance": "shop"}, ensure_ascii=False).encode(),
        json.dumps({"apikey": TOKEN}).replace("/", "\\/").encode(),  # as PHP's encoder writes it
        b'{"event": "messages.upsert", "apikey": "' + json.dumps(TOKEN)[1:-1].encode() + b'", "data": ',
        # The token outside any credential field: in a URL, in text.
        json.dumps({"server_url": f"https://evo.example/hook?x={TOKEN}", "text": TOKEN}).encode(),
        ("To=whatsapp%3A%2B1&Body=" + urllib.request.quote(TOKEN, safe="")).encode(),  # a form body
    ],
)
async def test_the_sources_secret_is_never_kept_in_any_spelling(tmp_path: Path, body: bytes) -> None:
    source = SourceSettings(provider="evolution", secret="old-token", secrets=[TOKEN])
    await RejectedStore(tmp_path / "rejected").save("evo", body, "no event name", settings=source)
    saved, _ = kept(tmp_path / "rejected")
    for spelling in (TOKEN, json.dumps(TOKEN)[1:-1], json.dumps(TOKEN, ensure_ascii=False)[1:-1]):
        assert spelling.encode() not in saved
    assert urllib.request.quote(TOKEN, safe="").encode() not in saved
    assert "ä".encode() not in saved  # nothing of it is left
    assert b"\\u00e4" not in saved
    assert b"[redacted]" in saved


@pytest.mark.parametrize(
    ("body", "left"),
    [
        (b'{"apikey": "' + INSTANCE_KEY.encode() + b'", "instance": "shop"}', b'"instance": "shop"'),
        (b'{"data": {"apiKey":"' + INSTANCE_KEY.encode() + b'"}}', b'"data"'),
        (b'{"Authorization": "Bearer ' + INSTANCE_KEY.encode() + b'"}', b"Authorization"),
        (b'{"access_token": 12345' + INSTANCE_KEY[:6].encode() + b", ", b"access_token"),
        (b'{"password": "' + INSTANCE_KEY.encode() + b'\\"x"}', b"password"),
        (b'{"apikey": "' + INSTANCE_KEY.encode(), b'"apikey"'),  # cut off in the middle
        (b"From=whatsapp%3A%2B1&api_key=" + INSTANCE_KEY.encode() + b"&Body=hi", b"Body=hi"),
        (b'{"url": "https://x.example/m?token=' + INSTANCE_KEY.encode() + b'&a=1"}', b"a=1"),
    ],
)
def test_credential_fields_lose_their_values_whatever_they_are(body: bytes, left: bytes) -> None:
    """The body's `apikey` is Evolution's instance key, which need not be our token."""
    redacted = redact(body)
    assert INSTANCE_KEY[:6].encode() not in redacted
    assert left in redacted


def test_ordinary_fields_are_kept() -> None:
    body = b'{"event": "messages.upsert", "data": {"key": {"id": "3EB0"}, "tokens": 3, "text": "hi"}}'
    assert redact(body) == body


async def test_files_are_0600_in_a_0700_directory_also_one_made_before(tmp_path: Path) -> None:
    directory = tmp_path / "rejected"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    (directory / "20200101T000000-old-00000000.body").write_bytes(b"{}")  # left by an older version
    (directory / "20200101T000000-old-00000000.body").chmod(0o644)
    store = RejectedStore(directory)
    await store.save("shop", b'{"broken": ', "truncated")
    assert mode(directory) == 0o700
    assert {mode(path) for path in directory.iterdir()} == {0o600}
    assert len(list(directory.iterdir())) == 3


async def test_the_reason_is_redacted_too(tmp_path: Path) -> None:
    source = SourceSettings(provider="wasender", secret="s3cret-value")
    store = RejectedStore(tmp_path / "rejected")
    await store.save("shop", b"{}", "bad value 's3cret-value' at 1", settings=source)
    _, note = kept(tmp_path / "rejected")
    assert "s3cret-value" not in note
    assert json.loads(note)["reason"] == "bad value '[redacted]' at 1"


def test_an_evolution_body_with_its_token_is_kept_without_it(daemon_factory) -> None:
    """The issue's case, as an operator meets it: a verified Evolution body that fails to
    parse was kept in rejected/ as sent, token included, mode 0644."""
    daemon = daemon_factory(
        f"""
        [sources.evo]
        provider = "evolution"
        secret = "{INSTANCE_KEY}"
        """
    ).start()
    body = json.dumps({"apikey": INSTANCE_KEY, "instance": "shop", "sender": "x"}).encode()  # no event name
    request = urllib.request.Request(
        daemon.url + "/webhooks/evo", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 400
    directory = daemon.state_dir / "rejected"
    saved, note = kept(directory)
    assert INSTANCE_KEY.encode() not in saved
    assert INSTANCE_KEY not in note
    assert json.loads(saved) == {"apikey": "[redacted]", "instance": "shop", "sender": "x"}
    assert mode(directory) == 0o700
    assert {mode(path) for path in directory.iterdir()} == {0o600}
    assert daemon.stop() == 0
