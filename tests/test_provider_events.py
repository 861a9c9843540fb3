"""Issue 13's defects, each as a user met it, and the identity rules of SPEC §3 and §4.

- a Wasender `message-receipt.update` with the receipt under `data.message` is a status;
- Twilio's validator accepts a URL with any explicit port also without it;
- an event relayed by one wahookd's `forward` sink into another's `standard` source keeps
  every normalized field exactly (two daemons, real HTTP);
- one message delivered twice by a Baileys-based provider, under `…@c.us` /
  `@s.whatsapp.net` and under `…@lid`, is one event.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from media_support import Route, StandIn, standin
from pydantic import SecretStr

from wahookd.providers import InboundRequest
from wahookd.providers.builtin import wahookd_register_providers
from wahookd.providers.twilio import url_variants
from wahookd.settings import SinkSettings, SourceSettings

FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS = {provider.name: provider for provider in wahookd_register_providers()}
FORM = "application/x-www-form-urlencoded"
SECRET = "issue-13-secret"
RELAY_SECRET = "whsec_" + base64.b64encode(b"relay-key-of-32-bytes-for-hmac!!").decode()


def parse(provider: str, body: bytes, content_type: str = "application/json") -> list[Any]:
    request = InboundRequest("POST", "https://hooks.example.com/webhooks/s", {}, body, content_type)
    return PROVIDERS[provider].parse(request, "s", SourceSettings(provider=provider))


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# --- Wasender: the receipt as Wasender's own page shows it ------------------------------


def test_wasender_receipt_under_data_message_is_a_status_a_status_sink_receives() -> None:
    (event,) = parse("wasender", (FIXTURES / "wasender/message-receipt-update-nested.json").read_bytes())
    record = event.to_dict()
    assert (record["kind"], record["status"], record["message_id"]) == (
        "status",
        "delivered",
        "3EB0OUT0000006",
    )
    # A group receipt: the group is the chat, the member it concerns is `to`.
    assert (record["chat_id"], record["to"]) == ("120363025246125486@g.us", "4917612345678")
    assert SinkSettings(plugin="file", kinds=["status"]).matches(record)


def test_wasender_receipts_of_two_group_members_are_two_events() -> None:
    body = fixture("wasender/message-receipt-update-nested.json")
    other = copy.deepcopy(body)
    other["data"]["message"]["receipt"]["userJid"] = "5511999999999@s.whatsapp.net"
    ids = {parse("wasender", json.dumps(b).encode())[0].id for b in (body, other)}
    assert len(ids) == 2


# --- Twilio: any explicit port ------------------------------------------------------------


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://hooks.example.com/webhooks/s", "https://hooks.example.com:1234/webhooks/s"),
        ("https://hooks.example.com/webhooks/s", "https://hooks.example.com:8443/webhooks/s"),
        ("http://hooks.example.com/webhooks/s?x=1", "http://hooks.example.com:8080/webhooks/s?x=1"),
        # The default-port rule stays, both ways.
        ("https://hooks.example.com/webhooks/s", "https://hooks.example.com:443/webhooks/s"),
        ("https://hooks.example.com:443/webhooks/s", "https://hooks.example.com/webhooks/s"),
        ("https://hooks.example.com:8443/webhooks/s", "https://hooks.example.com:8443/webhooks/s"),
    ],
)
def test_twilio_url_with_any_explicit_port_also_validates_without_it(
    signed_url: str, request_url: str
) -> None:
    source = SourceSettings(provider="twilio", secret=SecretStr(SECRET))
    body = (FIXTURES / "twilio/text.form").read_bytes()
    headers = PROVIDERS["twilio"].sign(body, signed_url, source)
    request = InboundRequest("POST", request_url, headers, body, FORM)
    assert PROVIDERS["twilio"].verify(request, source)


def test_twilio_url_variants_are_the_ones_twilios_validator_tries() -> None:
    assert url_variants("https://h:8443/x?a=1") == ["https://h:8443/x?a=1", "https://h/x?a=1"]
    assert url_variants("https://h/x") == ["https://h/x", "https://h:443/x"]
    assert url_variants("http://[::1]:8080/x") == ["http://[::1]:8080/x", "http://[::1]/x"]


# --- Baileys double delivery: one message, two addresses ------------------------------------


def test_waha_message_under_c_us_and_under_lid_is_one_event() -> None:
    cus = parse("waha", (FIXTURES / "waha/message-twice-cus.json").read_bytes())[0]
    lid = parse("waha", (FIXTURES / "waha/message-twice-lid.json").read_bytes())[0]
    assert cus.id == lid.id == "AC2AB3184AC4AEB3E0527911B838398F"
    assert (cus.sender, cus.from_lid) == ("5511987652504", None)
    assert (lid.sender, lid.from_lid) == (None, "209876543212345@lid")


def test_waha_acks_of_one_message_under_two_addresses_are_one_event() -> None:
    ack: dict[str, Any] = {
        "event": "message.ack",
        "session": "default",
        "payload": {"fromMe": True, "ack": 3, "ackName": "READ"},
    }
    ids = set()
    for chat in ("5511987652504@c.us", "209876543212345@lid"):
        body = copy.deepcopy(ack)
        body["payload"]["id"] = f"true_{chat}_3EB0ACK0000001"
        ids.add(parse("waha", json.dumps(body).encode())[0].id)
    assert ids == {"3EB0ACK0000001:read"}


@pytest.mark.parametrize(
    ("provider", "name"),
    [("wasender", "wasender/messages-received-text.json"), ("evolution", "evolution/messages-upsert.json")],
)
def test_baileys_message_under_phone_and_lid_address_is_one_event(provider: str, name: str) -> None:
    body = fixture(name)
    data = body["data"]["messages"] if provider == "wasender" else body["data"]
    phone = data["key"]["remoteJid"]
    lid = copy.deepcopy(body)
    (lid["data"]["messages"] if provider == "wasender" else lid["data"])["key"] |= {
        "remoteJid": "209876543212345@lid",
        "remoteJidAlt": phone,
    }
    first = parse(provider, json.dumps(body).encode())[0]
    second = parse(provider, json.dumps(lid).encode())[0]
    assert first.id == second.id
    assert first.sender == second.sender == phone.split("@")[0]
    assert second.from_lid == "209876543212345@lid"


def test_lid_only_sender_has_no_phone_in_from() -> None:
    body = fixture("wasender/messages-personal-received-lid.json")
    key = body["data"]["messages"]["key"]
    for name in ("senderPn", "cleanedSenderPn", "remoteJidAlt"):
        key.pop(name, None)
    (event,) = parse("wasender", json.dumps(body).encode())
    assert event.sender is None
    assert event.from_lid == key["remoteJid"]
    assert event.chat_id == key["remoteJid"]


def post(url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_waha_double_delivery_through_the_daemon_is_one_event_and_one_duplicate(
    daemon_factory: Any, tmp_path: Path
) -> None:
    sink = tmp_path / "events.jsonl"
    daemon = daemon_factory(
        f'[sources.wa]\nprovider = "waha"\nsecret = "{SECRET}"\n\n'
        f'[sinks.archive]\nplugin = "file"\npath = "{sink}"\n'
    ).start()
    source = SourceSettings(provider="waha", secret=SecretStr(SECRET))
    answers = []
    for name in ("waha/message-twice-cus.json", "waha/message-twice-lid.json"):
        body = (FIXTURES / name).read_bytes()
        headers = {"Content-Type": "application/json", **PROVIDERS["waha"].sign(body, "", source)}
        answers.append(post(f"{daemon.url}/webhooks/wa", body, headers))
    assert answers == [{"accepted": 1, "duplicates": 0}, {"accepted": 0, "duplicates": 1}]
    lines = wait_for_lines(sink, 1)
    assert [line["id"] for line in lines] == ["wa:AC2AB3184AC4AEB3E0527911B838398F"]


# --- forward -> standard: a relayed event keeps every normalized field ---------------------


def wait_for_lines(path: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if len(lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {count} lines")


RECEIVERS_OWN = ("id", "source", "provider", "received_at", "raw")


@pytest.fixture
def media_host() -> Any:
    with standin() as server:
        yield server


def test_event_relayed_by_forward_into_standard_keeps_every_normalized_field(
    daemon_factory: Any, tmp_path: Path, media_host: StandIn
) -> None:
    media_host.routes["/enc"] = Route(body=(FIXTURES / "wasender" / "3EB0IMG0000001.enc").read_bytes())
    for side in ("downstream", "upstream"):
        (tmp_path / side).mkdir()
    downstream_sink = tmp_path / "downstream.jsonl"
    downstream = daemon_factory(
        f'[sources.relay]\nprovider = "standard"\nsecret = "{RELAY_SECRET}"\n\n'
        f'[sinks.archive]\nplugin = "file"\npath = "{downstream_sink}"\n',
        workdir=tmp_path / "downstream",
    ).start()
    upstream_sink = tmp_path / "upstream.jsonl"
    upstream = daemon_factory(
        f'[media]\nallow_hosts = ["127.0.0.1"]\nbackoff_initial = 0.1\n\n'
        f'[sources.shop]\nprovider = "wasender"\nsecret = "{SECRET}"\n\n'
        f'[sinks.archive]\nplugin = "file"\npath = "{upstream_sink}"\n\n'
        f'[sinks.relay]\nplugin = "forward"\nurl = "{downstream.url}/webhooks/relay"\n'
        f'secret = "{RELAY_SECRET}"\n',
        workdir=tmp_path / "upstream",
    ).start()
    image = fixture("wasender/messages-upsert-image.json")
    image["data"]["message"]["imageMessage"]["url"] = media_host.url("/enc")
    bodies = [
        json.dumps(image).encode(),
        (FIXTURES / "wasender/messages-reaction-removed.json").read_bytes(),
        (FIXTURES / "wasender/messages-group-lid.json").read_bytes(),
        (FIXTURES / "wasender/message-receipt-update-nested.json").read_bytes(),
        (FIXTURES / "wasender/messages-upsert-protocol.json").read_bytes(),
        (FIXTURES / "wasender/session-status.json").read_bytes(),
    ]
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": SECRET}
    for body in bodies:
        post(f"{upstream.url}/webhooks/shop", body, headers)
    sent = wait_for_lines(upstream_sink, 8)
    received = wait_for_lines(downstream_sink, len(sent))
    (image_line,) = [line for line in sent if line["type"] == "image"]
    assert image_line["media"]["stored"] is not None, upstream.log()  # the file was stored upstream
    by_event = {line["raw"]["id"]: line for line in received}
    assert sorted(by_event) == sorted(line["id"] for line in sent)
    for original in sent:
        relayed = by_event[original["id"]]
        assert {k: v for k, v in relayed.items() if k not in RECEIVERS_OWN} == {
            k: v for k, v in original.items() if k not in RECEIVERS_OWN
        }
        assert (relayed["source"], relayed["provider"]) == ("relay", "standard")
        assert relayed["raw"] == original  # the receiver's raw: what it was sent
