"""Verification schemes: known-answer vectors, tampering, wrong and rotated secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr

from wahookd.providers import InboundRequest, Provider
from wahookd.providers.builtin import wahookd_register_providers
from wahookd.providers.standard import verify_signature as verify_standard
from wahookd.settings import SourceSettings

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = json.loads((FIXTURES / "vectors.json").read_text())
PROVIDERS: dict[str, Provider] = {p.name: p for p in wahookd_register_providers()}
FORM = "application/x-www-form-urlencoded"
URL = "https://hooks.example.com/webhooks/s"


def source(provider: str, secret: str = "s3cret", **extra: object) -> SourceSettings:
    return SourceSettings(provider=provider, secret=SecretStr(secret), **extra)


def request(
    body: bytes, headers: dict[str, str], content_type: str = "application/json", url: str = URL
) -> InboundRequest:
    return InboundRequest("POST", url, headers, body, content_type)


def signed(provider: str, kind: str = "text", settings: SourceSettings | None = None):
    settings = settings or source(provider)
    body, content_type = PROVIDERS[provider].sample(kind)
    headers = PROVIDERS[provider].sign(body, URL, settings)
    return body, headers, content_type


# --- published and independently computed vectors ---------------------------------------


def test_meta_vector_verifies() -> None:
    vector = VECTORS["meta"]
    req = request(vector["body"].encode(), {vector["header"]: vector["value"]})
    assert PROVIDERS["meta"].verify(req, source("meta", vector["secret"]))


def test_twilio_published_vector_verifies() -> None:
    vector = VECTORS["twilio"]
    body = urlencode(vector["params"]).encode()
    req = request(body, {vector["header"]: vector["value"]}, FORM, vector["url"])
    assert PROVIDERS["twilio"].verify(req, source("twilio", vector["auth_token"]))


def test_twilio_signature_settings_sha256_vector_verifies() -> None:
    # openssl dgst -sha256 -hmac 12345 over the published vector's signed string.
    vector = VECTORS["twilio"]
    body = urlencode(vector["params"]).encode()
    headers = {
        "X-Twilio-Signature": "033hgUJA9M/hXIZsYjwkerEP/DBm35nEri5FhCYjA5s=",
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_setting_01,algorithm=HMAC_SHA256",
    }
    req = request(body, headers, FORM, vector["url"])
    assert PROVIDERS["twilio"].verify(req, source("twilio", "12345"))
    # The same signature without the settings header is judged as SHA-1, and fails.
    del headers["X-Twilio-Webhooks-Signature-Settings"]
    assert not PROVIDERS["twilio"].verify(
        request(body, headers, FORM, vector["url"]), source("twilio", "12345")
    )


def test_twilio_json_body_vector_verifies_through_body_sha256() -> None:
    # Body and bodySHA256 from Twilio's JSON validation sample; signature by openssl.
    body = b'{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}'
    url = (
        "https://example.com/myapp?bodySHA256="
        "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"
    )
    headers = {"X-Twilio-Signature": "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="}
    assert PROVIDERS["twilio"].verify(request(body, headers, url=url), source("twilio", "12345"))
    tampered = body.replace(b"3030", b"3031")
    assert not PROVIDERS["twilio"].verify(request(tampered, headers, url=url), source("twilio", "12345"))


def test_waha_vector_verifies() -> None:
    # openssl dgst -sha512 -hmac waha-key
    body = b'{"event":"message","session":"default","payload":{"id":"x"}}'
    digest = (
        "a08e572767406f3140075d0647953f8609c37281ac6b1d687ae52fbd9547d347"
        "0871dcaed59b06d76cc7fa8615ab7515b5e0d102c466497405927c26311d028a"
    )
    headers = {"X-Webhook-Hmac": digest, "X-Webhook-Hmac-Algorithm": "sha512"}
    assert PROVIDERS["waha"].verify(request(body, headers), source("waha", "waha-key"))


def test_standard_webhooks_published_vector_verifies() -> None:
    # The Standard Webhooks reference libraries' test vector.
    secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    args = ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", signature, b'{"test": 2432232314}')
    assert verify_standard([secret], *args, now=1614265330)
    assert not verify_standard([secret], *args, now=1614265330 + 301)
    assert not verify_standard([secret], *args, now=1614265330 - 301)
    assert verify_standard([secret], *args, now=1614265330 + 299)


def test_wasender_signature_is_the_secret_itself() -> None:
    req = request(b"{}", {"X-Webhook-Signature": "s3cret"})
    assert PROVIDERS["wasender"].verify(req, source("wasender"))
    assert not PROVIDERS["wasender"].verify(req, source("wasender", "other"))


# --- every provider: sign/verify, tampering, wrong secret, rotation ------------------------

ALL = sorted(PROVIDERS)


@pytest.mark.parametrize("provider", ALL)
@pytest.mark.parametrize("kind", ["text", "image", "status"])
def test_signed_sample_verifies(provider: str, kind: str) -> None:
    body, headers, content_type = signed(provider, kind)
    assert PROVIDERS[provider].verify(request(body, headers, content_type), source(provider))


@pytest.mark.parametrize("provider", sorted(set(ALL) - {"wasender", "evolution"}))
def test_body_changed_by_one_byte_is_rejected(provider: str) -> None:
    body, headers, content_type = signed(provider)
    index = body.index(b"send-test")  # flip one byte inside a value
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    assert len(tampered) == len(body)
    assert not PROVIDERS[provider].verify(request(tampered, headers, content_type), source(provider))


@pytest.mark.parametrize("provider", ["wasender", "evolution"])
def test_token_providers_reject_a_token_changed_by_one_byte(provider: str) -> None:
    # Wasender and Evolution sign nothing: the body is not covered, the token must match.
    body, headers, content_type = signed(provider)
    name = next(iter(headers))
    headers[name] = headers[name][:-1] + chr(ord(headers[name][-1]) ^ 0x01)
    assert not PROVIDERS[provider].verify(request(body, headers, content_type), source(provider))


@pytest.mark.parametrize("provider", ALL)
def test_wrong_secret_is_rejected(provider: str) -> None:
    body, headers, content_type = signed(provider)
    assert not PROVIDERS[provider].verify(
        request(body, headers, content_type), source(provider, "not-the-secret")
    )


@pytest.mark.parametrize("provider", ALL)
def test_missing_signature_is_rejected(provider: str) -> None:
    body, _, content_type = signed(provider)
    assert not PROVIDERS[provider].verify(request(body, {}, content_type), source(provider))


@pytest.mark.parametrize("provider", ALL)
def test_rotated_second_secret_is_accepted(provider: str) -> None:
    new = source(provider, "the-new-secret")
    body, headers, content_type = signed(provider, settings=new)
    rotating = SourceSettings(
        provider=provider,
        secret=SecretStr("the-old-secret"),
        secrets=[SecretStr("the-new-secret")],
    )
    assert PROVIDERS[provider].verify(request(body, headers, content_type), rotating)
    old_only = source(provider, "the-old-secret")
    assert not PROVIDERS[provider].verify(request(body, headers, content_type), old_only)


@pytest.mark.parametrize("provider", ALL)
@pytest.mark.parametrize(
    "headers",
    [
        {
            "X-Webhook-Signature": "\u00e9\u00e9",
            "X-Hub-Signature-256": "sha256=\u00e9",
            "X-Twilio-Signature": "\u00e9",
            "X-Webhook-Hmac": "zz",
            "apikey": "\u00e9",
            "webhook-id": "x",
            "webhook-timestamp": "9" * 40,
            "webhook-signature": "v1,\u00e9",
        },
        {
            "X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_MD5",
            "X-Twilio-Signature": "a",
            "X-Webhook-Hmac-Algorithm": "sha1",
            "X-Webhook-Hmac": "00",
            "webhook-timestamp": "-5",
            "webhook-id": "",
            "webhook-signature": "",
        },
    ],
)
def test_garbage_headers_are_rejected_without_raising(provider: str, headers: dict[str, str]) -> None:
    for url in (URL, "http://[::1", "https://h:99999/x?bodySHA256=", ""):
        for content_type in ("application/json", FORM):
            req = request(b"\xff\x00{", headers, content_type, url)
            assert PROVIDERS[provider].verify(req, source(provider)) is False


# --- provider specifics ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://hooks.example.com/webhooks/s", "https://hooks.example.com:443/webhooks/s"),
        ("https://hooks.example.com:443/webhooks/s", "https://hooks.example.com/webhooks/s"),
        ("http://hooks.example.com/webhooks/s?x=1", "http://hooks.example.com:80/webhooks/s?x=1"),
    ],
)
def test_twilio_accepts_the_url_with_and_without_the_default_port(signed_url: str, request_url: str) -> None:
    settings = source("twilio")
    body, _ = PROVIDERS["twilio"].sample("text")
    headers = PROVIDERS["twilio"].sign(body, signed_url, settings)
    assert PROVIDERS["twilio"].verify(request(body, headers, FORM, request_url), settings)


def test_twilio_rejects_a_different_public_url() -> None:
    settings = source("twilio")
    body, _ = PROVIDERS["twilio"].sample("text")
    headers = PROVIDERS["twilio"].sign(body, "https://hooks.example.com/webhooks/s", settings)
    for other in (
        "http://hooks.example.com/webhooks/s",
        "https://hooks.example.com/webhooks/t",
        "https://other.example.com/webhooks/s",
    ):
        assert not PROVIDERS["twilio"].verify(request(body, headers, FORM, other), settings)
    # Twilio's validators drop any port, but never add one other than the default.
    headers = PROVIDERS["twilio"].sign(body, "https://hooks.example.com:8443/webhooks/s", settings)
    for other in ("https://hooks.example.com:9443/webhooks/s", "https://hooks.example.com/webhooks/s"):
        assert not PROVIDERS["twilio"].verify(request(body, headers, FORM, other), settings)


def test_twilio_json_body_without_body_sha256_is_rejected() -> None:
    settings = source("twilio")
    body = b'{"MessageSid": "SM1"}'
    headers = PROVIDERS["twilio"].sign(body, URL, settings)  # signs the URL only
    assert not PROVIDERS["twilio"].verify(request(body, headers), settings)


def test_twilio_answers_empty_twiml_as_xml() -> None:
    reply = PROVIDERS["twilio"].reply(1, 0)
    assert reply is not None
    assert reply.content_type.startswith("text/xml")
    assert reply.body.endswith(b"<Response/>")


def test_other_providers_answer_the_default_json() -> None:
    assert all(PROVIDERS[name].reply(1, 0) is None for name in ALL if name != "twilio")


def test_standard_webhooks_accepts_any_one_of_several_signatures() -> None:
    settings = source("standard", "whsec_" + "c2VjcmV0LWJ5dGVzLWZvci10ZXN0aW5n")
    body, _ = PROVIDERS["standard"].sample("text")
    headers = PROVIDERS["standard"].sign(body, URL, settings)
    good = headers["webhook-signature"]
    headers["webhook-signature"] = f"v1,AAAA v2,{good[3:]} {good} v1,BBBB"
    assert PROVIDERS["standard"].verify(request(body, headers), settings)
    headers["webhook-signature"] = "v1,AAAA v1,BBBB"
    assert not PROVIDERS["standard"].verify(request(body, headers), settings)


def test_standard_webhooks_rejects_replays_outside_five_minutes() -> None:
    settings = source("standard", "whsec_c2VjcmV0")
    body, _ = PROVIDERS["standard"].sample("text")
    from wahookd.providers.standard import secret_key, signature_of

    for offset, accepted in ((-400, False), (400, False), (-200, True), (200, True)):
        stamp = str(int(time.time()) + offset)
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": stamp,
            "webhook-signature": signature_of(secret_key(b"whsec_c2VjcmV0"), "msg_1", stamp, body),
        }
        assert PROVIDERS["standard"].verify(request(body, headers), settings) is accepted


def test_standard_webhooks_signs_the_id_too() -> None:
    settings = source("standard", "whsec_c2VjcmV0")
    body, _ = PROVIDERS["standard"].sample("text")
    headers = PROVIDERS["standard"].sign(body, URL, settings)
    headers["webhook-id"] += "x"
    assert not PROVIDERS["standard"].verify(request(body, headers), settings)


def test_evolution_accepts_the_token_in_the_body_apikey_field() -> None:
    body = json.dumps({"event": "messages.upsert", "apikey": "s3cret", "data": {}}).encode()
    assert PROVIDERS["evolution"].verify(request(body, {}), source("evolution"))
    wrong = json.dumps({"event": "messages.upsert", "apikey": "nope", "data": {}}).encode()
    assert not PROVIDERS["evolution"].verify(request(wrong, {}), source("evolution"))


def test_evolution_reads_the_configured_token_header() -> None:
    settings = source("evolution", token_header="X-Evolution-Token")
    body, _ = PROVIDERS["evolution"].sample("text")
    headers = PROVIDERS["evolution"].sign(body, URL, settings)
    assert headers == {"X-Evolution-Token": "s3cret"}
    assert PROVIDERS["evolution"].verify(request(body, headers), settings)
    assert not PROVIDERS["evolution"].verify(request(body, {"apikey": "s3cret"}), settings)


def test_meta_handshake_echoes_the_challenge_only_for_the_right_token() -> None:
    settings = source("meta", verify_token=SecretStr("tok"))
    meta = PROVIDERS["meta"]

    def handshake(query: dict[str, list[bytes]]) -> str | None:
        req = InboundRequest("GET", URL, {}, b"", "", query)
        return meta.handshake(req, settings)

    good = {
        "hub.mode": [b"subscribe"],
        "hub.verify_token": [b"tok"],
        "hub.challenge": [b"1158201444"],
    }
    assert handshake(good) == "1158201444"
    assert handshake({**good, "hub.verify_token": [b"tok2"]}) is None
    assert handshake({**good, "hub.mode": [b"unsubscribe"]}) is None
    assert handshake({"hub.mode": [b"subscribe"], "hub.challenge": [b"1"]}) is None
    assert meta.handshake(InboundRequest("GET", URL, {}, b"", "", good), source("meta")) is None
    assert PROVIDERS["wasender"].handshake(InboundRequest("GET", URL, {}, b"", "", good), settings) is None


def test_meta_verifies_raw_bytes_not_reserialized_json() -> None:
    raw = (FIXTURES / "meta/unicode-escaped.json").read_bytes()
    settings = source("meta")
    headers = PROVIDERS["meta"].sign(raw, URL, settings)
    assert PROVIDERS["meta"].verify(request(raw, headers), settings)
    reserialized = json.dumps(json.loads(raw), ensure_ascii=False, indent=2).encode() + b"\n"
    assert reserialized != raw
    assert not PROVIDERS["meta"].verify(request(reserialized, headers), settings)


def test_samples_use_fresh_message_ids() -> None:
    for provider in ALL:
        for kind in ("text", "image", "status"):
            assert PROVIDERS[provider].sample(kind)[0] != PROVIDERS[provider].sample(kind)[0]


@pytest.mark.parametrize("stamp", ["\u00b2", "\u0661\u0662\u0663", " 1 2 ", "1e9", "0x10"])
def test_standard_webhooks_rejects_non_ascii_or_odd_timestamps_without_raising(stamp: str) -> None:
    headers = {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": "v1,AAAA"}
    assert PROVIDERS["standard"].verify(request(b"{}", headers), source("standard")) is False
