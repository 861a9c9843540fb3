"""Arbitrary validly signed bodies against the daemon process: always 200 or 400, never a
500, and the daemon keeps serving."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from wahookd.providers.builtin import wahookd_register_providers
from wahookd.settings import SourceSettings

FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS = {p.name: p for p in wahookd_register_providers()}
SECRET = "http-property-secret"
FORM = "application/x-www-form-urlencoded"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "event",
                    "data",
                    "payload",
                    "entry",
                    "key",
                    "message",
                    "messages",
                    "changes",
                    "value",
                    "statuses",
                    "status",
                    "id",
                    "type",
                ]
            )
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
bodies = st.one_of(
    json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {
            "event": st.sampled_from(["messages.upsert", "message", "messages.update", "x"]),
            "data": json_values,
            "payload": json_values,
        }
    ).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
)


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_signed_arbitrary_bodies_get_200_or_400_and_the_daemon_keeps_serving(daemon_factory) -> None:
    config = "[ratelimit]\nrate = 100000\nburst = 100000\n\n" + "\n".join(
        f'[sources.{name}]\nprovider = "{name}"\nsecret = "{SECRET}"\n' for name in PROVIDERS
    )
    daemon = daemon_factory(config).start()
    sources = {name: SourceSettings(provider=name, secret=SecretStr(SECRET)) for name in PROVIDERS}
    seen: dict[int, int] = {}

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(provider=st.sampled_from(sorted(PROVIDERS)), body=bodies)
    def check(provider: str, body: bytes) -> None:
        url = f"{daemon.url}/webhooks/{provider}"
        content_type = "application/json"
        if provider == "twilio":
            content_type = FORM
            body = (
                urlencode({"MessageSid": "SM1", "Body": body.decode("latin-1")}).encode()
                if body[:1] == b"!"
                else body
            )
        if provider == "twilio" and not _is_utf8(body):
            return  # a form that is not UTF-8 cannot be signed the way Twilio signs
        public = f"http://127.0.0.1:{daemon.port}/webhooks/{provider}"
        headers = {"Content-Type": content_type, **PROVIDERS[provider].sign(body, public, sources[provider])}
        status = post(url, body, headers)
        seen[status] = seen.get(status, 0) + 1
        assert status in (200, 400), (provider, body[:200], status, daemon.log()[-2000:])

    check()
    with urllib.request.urlopen(daemon.url + "/healthz", timeout=5) as answer:
        assert answer.status == 200
    # Both outcomes were exercised.
    assert seen.get(200), seen
    assert seen.get(400), seen


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_twilio_json_body_signed_with_body_sha256_is_accepted(daemon_factory) -> None:
    daemon = daemon_factory(f'[sources.tw]\nprovider = "twilio"\nsecret = "{SECRET}"\n').start()
    body = json.dumps({"MessageSid": "SMjson0001", "Body": "hello", "From": "whatsapp:+1415"}).encode()
    query = f"?bodySHA256={hashlib.sha256(body).hexdigest()}"
    url = f"{daemon.url}/webhooks/tw{query}"
    settings_ = SourceSettings(provider="twilio", secret=SecretStr(SECRET))
    headers: dict[str, Any] = {
        "Content-Type": "application/json",
        **PROVIDERS["twilio"].sign(body, url, settings_),
    }
    assert post(url, body, headers) == 200
    assert post(url, body + b" ", headers) == 401


def test_twilio_behind_a_trusted_proxy_verifies_against_the_forwarded_url(daemon_factory) -> None:
    daemon = daemon_factory(f'[sources.tw]\nprovider = "twilio"\nsecret = "{SECRET}"\n').start()
    settings_ = SourceSettings(provider="twilio", secret=SecretStr(SECRET))
    body = (FIXTURES / "twilio/text.form").read_bytes()
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com", "Content-Type": FORM}
    for signed_url in ("https://hooks.example.com/webhooks/tw", "https://hooks.example.com:443/webhooks/tw"):
        headers = {**forwarded, **PROVIDERS["twilio"].sign(body, signed_url, settings_)}
        request = urllib.request.Request(f"{daemon.url}/webhooks/tw", data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/xml")
            assert answer.read().endswith(b"<Response/>")
    # Signed for another host: the forwarded URL does not match.
    headers = {**forwarded, **PROVIDERS["twilio"].sign(body, "https://evil.example/webhooks/tw", settings_)}
    assert post(f"{daemon.url}/webhooks/tw", body, headers) == 401


def test_meta_batch_redelivered_creates_no_new_events(daemon_factory) -> None:
    daemon = daemon_factory(f'[sources.m]\nprovider = "meta"\nsecret = "{SECRET}"\n').start()
    settings_ = SourceSettings(provider="meta", secret=SecretStr(SECRET))
    body = (FIXTURES / "meta/batch.json").read_bytes()
    headers = {"Content-Type": "application/json", **PROVIDERS["meta"].sign(body, "", settings_)}
    answers = []
    for _ in range(2):
        request = urllib.request.Request(f"{daemon.url}/webhooks/m", data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            answers.append(json.loads(answer.read()))
    assert answers == [{"accepted": 5, "duplicates": 0}, {"accepted": 0, "duplicates": 5}]


def test_meta_handshake_through_the_daemon(daemon_factory) -> None:
    daemon = daemon_factory(
        f'[sources.m]\nprovider = "meta"\nsecret = "{SECRET}"\nverify_token = "vt"\n'
    ).start()
    query = "hub.mode=subscribe&hub.verify_token=vt&hub.challenge=8675309"
    with urllib.request.urlopen(f"{daemon.url}/webhooks/m?{query}", timeout=10) as answer:
        assert answer.read() == b"8675309"
    wrong = f"{daemon.url}/webhooks/m?{query.replace('=vt', '=no')}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=10)
    assert refused.value.code == 403
