# ruff: noqa: E501 - the EXPECTED table keeps one event per line
"""Every fixture through its provider: every normalized field of every event (SPEC §4).

`EXPECTED` lists each event's non-null fields (besides source, provider, raw and
received_at, checked apart); a field missing here must be null in the event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wahookd.errors import ParseError
from wahookd.events import KINDS, MESSAGE_TYPES, STATUSES, Event, new_media
from wahookd.providers import InboundRequest, Provider
from wahookd.providers.builtin import wahookd_register_providers
from wahookd.settings import SourceSettings

FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS: dict[str, Provider] = {p.name: p for p in wahookd_register_providers()}
FORM = "application/x-www-form-urlencoded"


def MEDIA(mime: str | None, filename: str | None, size: int | None) -> dict[str, Any]:
    return new_media(mime, filename, size)


def request_for(path: Path, headers: dict[str, str] | None = None) -> InboundRequest:
    content_type = FORM if path.suffix == ".form" else "application/json"
    return InboundRequest(
        "POST",
        "https://hooks.example.com/webhooks/s",
        headers or {"webhook-id": "msg_fixture"},
        path.read_bytes(),
        content_type,
    )


def parse_fixture(name: str) -> list[Event]:
    path = FIXTURES / name
    provider = PROVIDERS[path.parent.name]
    return provider.parse(request_for(path), "s", SourceSettings(provider=provider.name))


# One line per event, so that a fixture's events read as a table.
# fmt: off
EXPECTED = {
    "evolution/connection-update.json": [
        {'id': 'e3490bace08079bde1244a960270e522', 'kind': 'system', 'event': 'connection.update', 'timestamp': '2024-05-29T09:00:00Z'},
    ],
    "evolution/messages-update-read.json": [
        {'id': '3EB0AABBCCDD:read', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0AABBCCDD', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2024-05-29T10:01:00Z'},
    ],
    "evolution/messages-update-v1.json": [
        {'id': '3EB0EVOV1:delivered', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0EVOV1', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'status': 'delivered', 'timestamp': '2024-05-29T10:04:00Z'},
        {'id': '3EB0EVOV1:read', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0EVOV1', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2024-05-29T10:04:00Z'},
    ],
    "evolution/messages-upsert-voice-uppercase.json": [
        {'id': '3EB0EVOVOICE1', 'kind': 'message', 'event': 'MESSAGES_UPSERT', 'message_id': '3EB0EVOVOICE1', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'voice', 'timestamp': '2024-05-29T16:28:20Z', 'media': MEDIA('audio/ogg; codecs=opus', None, 4096)},
    ],
    "evolution/messages-upsert.json": [
        {'id': '3EB0C767D26A1D4E6F', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0C767D26A1D4E6F', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'oi', 'timestamp': '2024-05-29T16:26:40Z'},
    ],
    "evolution/send-message.json": [
        {'id': '3EB0EVOSENT1', 'kind': 'message', 'event': 'send.message', 'message_id': '3EB0EVOSENT1', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'type': 'text', 'text': 'thanks!', 'timestamp': '2024-05-29T16:30:00Z'},
    ],
    "meta/batch.json": [
        {'id': 'wamid.BATCH1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.BATCH1', 'chat_id': '5511999999999', 'from': '5511999999999', 'to': '15550783881', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'first', 'timestamp': '2025-06-08T20:59:43Z'},
        {'id': 'wamid.BATCH2', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.BATCH2', 'chat_id': '4917612345678', 'from': '4917612345678', 'to': '15550783881', 'from_me': False, 'sender_name': 'Bo', 'type': 'voice', 'timestamp': '2025-06-08T20:59:44Z', 'media': MEDIA('audio/ogg; codecs=opus', None, None)},
        {'id': 'wamid.OUT9:read', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT9', 'chat_id': '5511999999999', 'from': '15550783881', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2025-06-08T20:59:45Z'},
        {'id': 'wamid.OUT9:delivered', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT9', 'chat_id': '5511999999999', 'from': '15550783881', 'to': '5511999999999', 'from_me': True, 'status': 'delivered', 'timestamp': '2025-06-08T20:59:40Z'},
        {'id': '70a2ad6f41609ced3549f6190f1796d3', 'kind': 'system', 'event': 'message_template_status_update'},
    ],
    "meta/echo.json": [
        {'id': 'wamid.ECHO1', 'kind': 'message', 'event': 'smb_message_echoes', 'message_id': 'wamid.ECHO1', 'chat_id': '16505551234', 'from': '15550783881', 'to': '16505551234', 'from_me': True, 'type': 'text', 'text': 'sent from the app', 'timestamp': '2023-11-14T22:16:40Z'},
    ],
    "meta/image.json": [
        {'id': 'wamid.IMAGE0001', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.IMAGE0001', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'image', 'text': 'receipt', 'timestamp': '2025-06-08T21:00:00Z', 'media': MEDIA('image/jpeg', None, None)},
    ],
    "meta/status-delivered.json": [
        {'id': 'wamid.OUT0001:delivered', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT0001', 'chat_id': '16505551234', 'from': '15550783881', 'to': '16505551234', 'from_me': True, 'status': 'delivered', 'timestamp': '2025-06-08T21:01:40Z'},
    ],
    "meta/status-failed.json": [
        {'id': 'wamid.OUT0002:failed', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT0002', 'chat_id': '16505551234', 'from': '15550783881', 'to': '16505551234', 'from_me': True, 'status': 'failed', 'error': {'code': '130472', 'title': "User's number is part of an experiment", 'message': "User's number is part of an experiment"}, 'timestamp': '2023-07-15T00:20:58Z'},
    ],
    "meta/text.json": [
        {'id': 'wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'text', 'text': 'Does it come in another color?', 'timestamp': '2025-06-08T20:59:43Z'},
    ],
    "meta/types.json": [
        {'id': 'wamid.T_VIDEO', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_VIDEO', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'video', 'text': 'clip', 'timestamp': '2023-11-14T22:13:21Z', 'media': MEDIA('video/mp4', None, None)},
        {'id': 'wamid.T_DOC', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_DOC', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'document', 'text': 'your invoice', 'timestamp': '2023-11-14T22:13:22Z', 'media': MEDIA('application/pdf', 'invoice.pdf', None)},
        {'id': 'wamid.T_STICKER', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_STICKER', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'sticker', 'timestamp': '2023-11-14T22:13:23Z', 'media': MEDIA('image/webp', None, None)},
        {'id': 'wamid.T_AUDIO', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_AUDIO', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'audio', 'timestamp': '2023-11-14T22:13:24Z', 'media': MEDIA('audio/mpeg', None, None)},
        {'id': 'wamid.T_LOC', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_LOC', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'location', 'text': 'Shop', 'timestamp': '2023-11-14T22:13:25Z'},
        {'id': 'wamid.T_CONTACTS', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_CONTACTS', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'contacts', 'timestamp': '2023-11-14T22:13:26Z'},
        {'id': 'wamid.T_BTNREPLY', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_BTNREPLY', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'interactive', 'text': 'Yes please', 'timestamp': '2023-11-14T22:13:27Z'},
        {'id': 'wamid.T_LISTREPLY', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_LISTREPLY', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'interactive', 'text': 'Blue', 'timestamp': '2023-11-14T22:13:28Z'},
        {'id': 'wamid.T_BUTTON', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_BUTTON', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'button', 'text': 'Stop promotions', 'timestamp': '2023-11-14T22:13:29Z'},
        {'id': 'wamid.T_REACTION', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_REACTION', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'reaction', 'text': '👍', 'timestamp': '2023-11-14T22:13:30Z'},
        {'id': 'wamid.T_ORDER', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_ORDER', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'unknown', 'timestamp': '2023-11-14T22:13:31Z'},
        {'id': 'wamid.T_UNSUPPORTED', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_UNSUPPORTED', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'unknown', 'error': {'code': '131051', 'title': 'Message type unknown', 'message': None}, 'timestamp': '2023-11-14T22:13:32Z'},
    ],
    "meta/unicode-escaped.json": [
        {'id': 'wamid.UNICODE1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.UNICODE1', 'chat_id': '34600111222', 'from': '34600111222', 'to': '15550783881', 'from_me': False, 'sender_name': 'José Müller', 'type': 'text', 'text': '¿Tienen café? ☕😀', 'timestamp': '2023-11-14T22:15:00Z'},
    ],
    "standard/forwarded-event.json": [
        {'id': 'msg_fixture', 'kind': 'message', 'event': 'whatsapp.message', 'message_id': 'wamid.FWD1', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena', 'type': 'image', 'text': 'receipt', 'timestamp': '2025-06-08T21:00:00Z'},
    ],
    "standard/message.json": [
        {'id': 'msg_fixture', 'kind': 'message', 'event': 'message.received', 'message_id': 'msg_1', 'chat_id': '14155550100', 'from': '14155550100', 'type': 'text', 'text': 'hi', 'timestamp': '2024-05-29T10:00:00Z'},
    ],
    "standard/status.json": [
        {'id': 'msg_fixture', 'kind': 'status', 'event': 'message.status', 'message_id': 'msg_1', 'to': '14155550100', 'status': 'read', 'timestamp': '2024-05-29T16:26:40Z'},
    ],
    "standard/system.json": [
        {'id': 'msg_fixture', 'kind': 'system', 'event': 'account.updated', 'timestamp': '2024-05-29T16:26:40Z'},
    ],
    "twilio/button.form": [
        {'id': 'SMaaaabbbbccccddddeeeeffff00001111', 'kind': 'message', 'event': 'message', 'message_id': 'SMaaaabbbbccccddddeeeeffff00001111', 'chat_id': '14155238886', 'from': '14155238886', 'to': '15005550006', 'from_me': False, 'sender_name': 'Jane', 'type': 'button', 'text': 'Confirm'},
    ],
    "twilio/location.form": [
        {'id': 'SM99990000111122223333444455556666', 'kind': 'message', 'event': 'message', 'message_id': 'SM99990000111122223333444455556666', 'chat_id': '14155238886', 'from': '14155238886', 'to': '15005550006', 'from_me': False, 'sender_name': 'Jane', 'type': 'location', 'text': 'Twilio Inc'},
    ],
    "twilio/media.form": [
        {'id': 'MM0123456789abcdef0123456789abcdef', 'kind': 'message', 'event': 'message', 'message_id': 'MM0123456789abcdef0123456789abcdef', 'chat_id': '14155238886', 'from': '14155238886', 'to': '15005550006', 'from_me': False, 'sender_name': 'Jane', 'type': 'image', 'media': MEDIA('image/jpeg', None, None)},
    ],
    "twilio/status-read.form": [
        {'id': 'SMfedcba9876543210fedcba9876543210:read', 'kind': 'status', 'event': 'status', 'message_id': 'SMfedcba9876543210fedcba9876543210', 'chat_id': '14155238886', 'from': '15005550006', 'to': '14155238886', 'from_me': True, 'status': 'read'},
    ],
    "twilio/status-undelivered.form": [
        {'id': 'SM11112222333344445555666677778888:failed', 'kind': 'status', 'event': 'status', 'message_id': 'SM11112222333344445555666677778888', 'chat_id': '14155238886', 'from': '15005550006', 'to': '14155238886', 'from_me': True, 'status': 'failed', 'error': {'code': '63016', 'message': 'Failed to send freeform message because you are outside the allowed window.'}},
    ],
    "twilio/text.form": [
        {'id': 'SM0123456789abcdef0123456789abcdef', 'kind': 'message', 'event': 'message', 'message_id': 'SM0123456789abcdef0123456789abcdef', 'chat_id': '14155238886', 'from': '14155238886', 'to': '15005550006', 'from_me': False, 'sender_name': 'Jane', 'type': 'text', 'text': 'Hello'},
    ],
    "twilio/voice.form": [
        {'id': 'MMaaaabbbbccccddddeeeeffff00002222', 'kind': 'message', 'event': 'message', 'message_id': 'MMaaaabbbbccccddddeeeeffff00002222', 'chat_id': '14155238886', 'from': '14155238886', 'to': '15005550006', 'from_me': False, 'sender_name': 'Jane', 'type': 'audio', 'media': MEDIA('audio/ogg', None, None)},
    ],
    "waha/message-ack-failed.json": [
        {'id': 'true_11111111111@c.us_FFFFFFFF:failed', 'kind': 'status', 'event': 'message.ack', 'message_id': 'true_11111111111@c.us_FFFFFFFF', 'chat_id': '11111111111', 'to': '11111111111', 'from_me': True, 'status': 'failed', 'error': {'code': 'ERROR', 'message': None}},
    ],
    "waha/message-ack-read.json": [
        {'id': 'true_11111111111@c.us_4CC5EDD64BC22EBA6D639F2AF571346C:read', 'kind': 'status', 'event': 'message.ack', 'message_id': 'true_11111111111@c.us_4CC5EDD64BC22EBA6D639F2AF571346C', 'chat_id': '11111111111', 'to': '11111111111', 'from_me': True, 'status': 'read'},
    ],
    "waha/message-group.json": [
        {'id': 'false_120363025246125486@g.us_CCCCCCCC_33333333333@c.us', 'kind': 'message', 'event': 'message.any', 'message_id': 'false_120363025246125486@g.us_CCCCCCCC_33333333333@c.us', 'chat_id': '120363025246125486@g.us', 'from': '33333333333', 'to': '22222222222', 'from_me': False, 'type': 'text', 'text': 'hello all', 'timestamp': '2022-11-04T11:35:00Z'},
    ],
    "waha/message-image.json": [
        {'id': 'false_11111111111@c.us_BBBBBBBBBBBBBBBB', 'kind': 'message', 'event': 'message', 'message_id': 'false_11111111111@c.us_BBBBBBBBBBBBBBBB', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'sender_name': 'Jane', 'type': 'image', 'text': 'look', 'timestamp': '2022-11-04T11:31:40Z', 'media': MEDIA('image/jpeg', None, None)},
    ],
    "waha/message-noweb-voice.json": [
        {'id': 'false_11111111111@c.us_3EB0NOWEB01', 'kind': 'message', 'event': 'message', 'message_id': 'false_11111111111@c.us_3EB0NOWEB01', 'chat_id': '11111111111', 'from': '11111111111', 'from_me': False, 'sender_name': 'Jane', 'type': 'voice', 'timestamp': '2022-11-04T11:33:20Z', 'media': MEDIA('audio/ogg; codecs=opus', None, None)},
    ],
    "waha/message-reaction.json": [
        {'id': 'false_11111111111@c.us_DDDDDDDD', 'kind': 'message', 'event': 'message.reaction', 'message_id': 'false_11111111111@c.us_DDDDDDDD', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'reaction', 'text': '🙏', 'timestamp': '2022-11-04T11:36:40Z'},
    ],
    "waha/message.json": [
        {'id': 'false_11111111111@c.us_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'kind': 'message', 'event': 'message', 'message_id': 'false_11111111111@c.us_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'text', 'text': 'Hi there!', 'timestamp': '2022-11-04T11:31:25Z'},
    ],
    "waha/session-status.json": [
        {'id': 'fee5977f3454c596e07930da0800a07b', 'kind': 'system', 'event': 'session.status'},
    ],
    "wasender/chats-upsert.json": [
        {'id': '1444d5e647194eca49927aba710c3a7e', 'kind': 'system', 'event': 'chats.upsert', 'timestamp': '2025-05-20T21:10:31Z'},
    ],
    "wasender/message-personal-received.json": [
        {'id': '3EB0ALT0000002', 'kind': 'message', 'event': 'message.personal.received', 'message_id': '3EB0ALT0000002', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'text', 'text': 'second spelling', 'timestamp': '2025-05-20T21:10:32Z'},
    ],
    "wasender/message-receipt-update.json": [
        {'id': '3EB0OUT0000005:read', 'kind': 'status', 'event': 'message-receipt.update', 'message_id': '3EB0OUT0000005', 'chat_id': '120363025246125486@g.us', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2025-05-20T21:10:30Z'},
    ],
    "wasender/messages-personal-received-lid.json": [
        {'id': '3EB0LID0000001', 'kind': 'message', 'event': 'messages-personal.received', 'message_id': '3EB0LID0000001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'oi', 'timestamp': '2025-05-20T21:10:31Z'},
    ],
    "wasender/messages-reaction.json": [
        {'id': '3EB0REACT0001', 'kind': 'message', 'event': 'messages.reaction', 'message_id': '3EB0REACT0001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'reaction', 'text': '👍', 'timestamp': '2025-05-20T21:10:30.123Z'},
    ],
    "wasender/messages-received-text.json": [
        {'id': '3EB0X123456789', 'kind': 'message', 'event': 'messages.received', 'message_id': '3EB0X123456789', 'chat_id': '1234567890', 'from': '1234567890', 'from_me': False, 'type': 'text', 'text': 'Hello, I have a question', 'timestamp': '2021-10-05T17:59:49Z'},
    ],
    "wasender/messages-update-array.json": [
        {'id': '3EB0OUT0000002:sent', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000002', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'sent', 'timestamp': '2025-05-20T21:10:31.467Z'},
        {'id': '3EB0OUT0000002:delivered', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000002', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'delivered', 'timestamp': '2025-05-20T21:10:31.467Z'},
        {'id': '3EB0OUT0000003:failed', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000003', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'failed', 'error': {'code': 'ERROR', 'message': None}, 'timestamp': '2025-05-20T21:10:31.467Z'},
        {'id': '3EB0OUT0000004:played', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000004', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'played', 'timestamp': '2025-05-20T21:10:31.467Z'},
    ],
    "wasender/messages-update-read.json": [
        {'id': '3EB0OUT0000001:read', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000001', 'chat_id': '1234567890', 'to': '1234567890', 'from_me': True, 'status': 'read', 'timestamp': '2025-05-20T21:10:31.467Z'},
    ],
    "wasender/messages-upsert-array.json": [
        {'id': '3EB0A1B2C3D4E5F6', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0A1B2C3D4E5F6', 'chat_id': '1234567890', 'from': '1234567890', 'from_me': False, 'sender_name': 'Sheena', 'type': 'text', 'text': 'Is the blue one in stock?', 'timestamp': '2021-10-05T17:59:50Z'},
    ],
    "wasender/messages-upsert-image.json": [
        {'id': '3EB0IMG0000001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0IMG0000001', 'chat_id': '1234567890', 'from': '1234567890', 'from_me': False, 'type': 'image', 'text': 'Check out this image!', 'timestamp': '2021-10-05T17:59:51Z', 'media': MEDIA('image/jpeg', None, 13)},
    ],
    "wasender/messages-upsert-types.json": [
        {'id': '3EB0B00000001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'disappearing', 'timestamp': '2025-05-20T21:10:40Z'},
        {'id': '3EB0B00000002', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000002', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'video', 'text': 'vid', 'timestamp': '2025-05-20T21:10:41Z', 'media': MEDIA('video/mp4', None, 2048)},
        {'id': '3EB0B00000003', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000003', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'voice', 'timestamp': '2025-05-20T21:10:42Z', 'media': MEDIA('audio/ogg; codecs=opus', None, 5120)},
        {'id': '3EB0B00000004', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000004', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'audio', 'timestamp': '2025-05-20T21:10:43Z', 'media': MEDIA('audio/mpeg', None, 9000)},
        {'id': '3EB0B00000005', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000005', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'document', 'text': 'our menu', 'timestamp': '2025-05-20T21:10:44Z', 'media': MEDIA('application/pdf', 'menu.pdf', 77)},
        {'id': '3EB0B00000006', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000006', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'sticker', 'timestamp': '2025-05-20T21:10:45Z', 'media': MEDIA('image/webp', None, 300)},
        {'id': '3EB0B00000007', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000007', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'location', 'text': 'Loja', 'timestamp': '2025-05-20T21:10:46Z'},
        {'id': '3EB0B00000008', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000008', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'contacts', 'text': 'Jo', 'timestamp': '2025-05-20T21:10:47Z'},
        {'id': '3EB0B00000009', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000009', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'contacts', 'text': '2 contacts', 'timestamp': '2025-05-20T21:10:48Z'},
        {'id': '3EB0B00000010', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000010', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'button', 'text': 'Yes', 'timestamp': '2025-05-20T21:10:49Z'},
        {'id': '3EB0B00000011', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000011', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'interactive', 'text': 'Blue', 'timestamp': '2025-05-20T21:10:50Z'},
        {'id': '3EB0B00000012', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000012', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'button', 'text': 'Track order', 'timestamp': '2025-05-20T21:10:51Z'},
        {'id': '3EB0B00000013', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000013', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'reaction', 'text': '❤️', 'timestamp': '2025-05-20T21:10:52Z'},
        {'id': '3EB0B00000014', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000014', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'poll', 'text': 'Which day?', 'timestamp': '2025-05-20T21:10:53Z'},
        {'id': '3EB0B00000015', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000015', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'image', 'timestamp': '2025-05-20T21:10:54Z', 'media': MEDIA('image/jpeg', None, 10)},
        {'id': '3EB0B00000016', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000016', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'unknown', 'timestamp': '2025-05-20T21:10:55Z'},
        {'id': '3EB0FROMME01', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0FROMME01', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'type': 'text', 'text': 'reply from the phone', 'timestamp': '2025-05-20T21:11:40Z'},
        {'id': '3EB0GROUP001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0GROUP001', 'chat_id': '120363025246125486@g.us', 'from': '4917612345678', 'from_me': False, 'sender_name': 'Bo', 'type': 'text', 'text': 'hi group', 'timestamp': '2025-05-20T21:11:41Z'},
    ],
    "wasender/session-status.json": [
        {'id': 'ff66751621634de737b03277b2d0cff1', 'kind': 'system', 'event': 'session.status', 'timestamp': '2021-10-05T17:59:49Z'},
    ],
    "wasender/webhook-test.json": [
        {'id': 'f35ca78fb51d1e5f1fb9f276cc9f6e48', 'kind': 'system', 'event': 'webhook.test', 'timestamp': '2025-05-20T21:10:31Z'},
    ],
}
# fmt: on


def fixture_names() -> list[str]:
    return sorted(
        f"{path.parent.name}/{path.name}"
        for path in FIXTURES.glob("*/*")
        if path.suffix in (".json", ".form")
    )


def test_every_fixture_has_expected_events() -> None:
    assert fixture_names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_normalizes_every_field(name: str) -> None:
    events = parse_fixture(name)
    provider = name.split("/")[0]
    got = []
    for event in events:
        record = event.to_dict()
        assert record.pop("source") == "s"
        assert record.pop("provider") == provider
        assert record.pop("received_at") is None  # the journal sets it
        record.pop("raw")
        got.append({key: value for key, value in record.items() if value is not None})
    assert got == EXPECTED[name]


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_events_are_json_and_use_spec_vocabulary(name: str) -> None:
    for event in parse_fixture(name):
        record = event.to_dict()
        assert json.loads(json.dumps(record, ensure_ascii=False)) == record
        assert record["kind"] in KINDS
        if record["kind"] == "message":
            assert record["type"] in MESSAGE_TYPES
        if record["kind"] == "status":
            assert record["status"] in STATUSES
            if record["provider"] != "standard":  # Standard Webhooks: the id is webhook-id
                assert record["id"] == f"{record['message_id']}:{record['status']}"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_wasender_raw_is_the_baileys_message_unchanged() -> None:
    body = load("wasender/messages-upsert-types.json")
    events = parse_fixture("wasender/messages-upsert-types.json")
    assert [event.raw for event in events] == body["data"]["messages"]
    image = parse_fixture("wasender/messages-upsert-image.json")[0]
    assert image.raw == load("wasender/messages-upsert-image.json")["data"]
    assert image.raw["message"]["imageMessage"]["mediaKey"]  # what the media stage decrypts with


def test_meta_raw_is_each_message_and_status_object_unchanged() -> None:
    body = load("meta/batch.json")
    events = parse_fixture("meta/batch.json")
    first = body["entry"][0]["changes"][0]["value"]
    second = body["entry"][1]["changes"]
    assert [event.raw for event in events] == [
        *first["messages"],
        *first["statuses"],
        *second[0]["value"]["statuses"],
        second[1],
    ]


def test_meta_non_ascii_escapes_decode_to_the_original_text() -> None:
    raw = (FIXTURES / "meta/unicode-escaped.json").read_bytes()
    assert raw.isascii()
    assert b"\\u00bf" in raw
    assert b"\\ud83d\\ude00" in raw
    event = parse_fixture("meta/unicode-escaped.json")[0]
    assert event.text == "\u00bfTienen caf\u00e9? \u2615\U0001f600"


def test_twilio_raw_is_the_flat_form() -> None:
    event = parse_fixture("twilio/media.form")[0]
    assert event.raw["MediaUrl0"].startswith("https://api.twilio.com/")
    assert event.raw["NumMedia"] == "1"
    assert all(isinstance(value, str) for value in event.raw.values())


def test_waha_and_evolution_raw_is_the_payload_or_data() -> None:
    assert parse_fixture("waha/message-image.json")[0].raw == load("waha/message-image.json")["payload"]
    voice = parse_fixture("evolution/messages-upsert-voice-uppercase.json")[0]
    assert voice.raw == load("evolution/messages-upsert-voice-uppercase.json")["data"]
    assert voice.raw["message"]["base64"] == "T2dnUw=="


def test_standard_raw_is_the_body_and_forwarded_media_is_not_fetched_again() -> None:
    event = parse_fixture("standard/forwarded-event.json")[0]
    assert event.raw == load("standard/forwarded-event.json")
    assert event.media is None


@pytest.mark.parametrize("name", fixture_names())
def test_same_webhook_twice_gives_the_same_ids(name: str) -> None:
    assert [e.id for e in parse_fixture(name)] == [e.id for e in parse_fixture(name)]


def test_two_statuses_of_one_message_are_two_events() -> None:
    ids = [event.id for event in parse_fixture("evolution/messages-update-v1.json")]
    assert ids == ["3EB0EVOV1:delivered", "3EB0EVOV1:read"]


def parse_body(provider: str, body: dict[str, Any]) -> list[Event]:
    request = InboundRequest(
        "POST",
        "https://hooks.example.com/webhooks/s",
        {},
        json.dumps(body).encode(),
        "application/json",
    )
    return PROVIDERS[provider].parse(request, "s", SourceSettings(provider=provider))


def test_system_event_reported_again_later_is_a_new_event() -> None:
    body = load("wasender/session-status.json")
    first = parse_body("wasender", body)[0]
    again = parse_body("wasender", {**body, "timestamp": body["timestamp"] + 60})[0]
    assert first.kind == again.kind == "system"
    assert first.id != again.id
    assert parse_body("wasender", body)[0].id == first.id


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("wasender", {"event": "brand.new-event", "data": {"x": 1}}),
        ("wasender", {"event": "messages.upsert", "data": {"unexpected": True}}),
        ("waha", {"event": "poll.vote", "session": "default", "payload": {"vote": {}}}),
        ("waha", {"event": "message", "session": "default", "payload": "not an object"}),
        ("evolution", {"event": "CALL", "instance": "i", "data": [1, 2]}),
        ("evolution", {"event": "messages.update", "instance": "i", "data": {"status": "DELETED"}}),
        (
            "meta",
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "1",
                        "changes": [{"field": "account_update", "value": {"event": "VERIFIED"}}],
                    }
                ],
            },
        ),
    ],
)
def test_unknown_or_unexpected_events_become_system_events(provider: str, body: Any) -> None:
    events = parse_body(provider, body)
    assert [event.kind for event in events] == ["system"]
    assert events[0].raw is not None


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("wasender", b"not json"),
        ("wasender", b"[1, 2]"),
        ("wasender", b'{"data": {}}'),
        ("meta", b'{"object": "whatsapp_business_account"}'),
        ("meta", b'{"entry": [{"changes": "nope"}]}'),
        ("waha", b'{"payload": {}}'),
        ("evolution", b'{"event": 5}'),
        ("standard", b'"just a string"'),
        ("wasender", b'{"event": "x", "n": NaN}'),
        ("wasender", b'{"event": "x", "s": "\\ud800"}'),
        ("wasender", b'{"event": "x", "s": "\xff"}'),
        ("wasender", b"[" * 100_000),
    ],
)
def test_malformed_bodies_raise_parse_error(provider: str, body: bytes) -> None:
    request = InboundRequest("POST", "https://h/webhooks/s", {}, body, "application/json")
    with pytest.raises(ParseError):
        PROVIDERS[provider].parse(request, "s", SourceSettings(provider=provider))


def test_twilio_json_body_is_read_like_a_form() -> None:
    fields = dict(line.split("=", 1) for line in ["MessageSid=SMjson1", "Body=hi", "NumMedia=0"])
    request = InboundRequest(
        "POST",
        "https://h/webhooks/s",
        {},
        json.dumps({**fields, "NumSegments": 1}).encode(),
        "application/json",
    )
    event = PROVIDERS["twilio"].parse(request, "s", SourceSettings(provider="twilio"))[0]
    assert (event.id, event.kind, event.type, event.text) == ("SMjson1", "message", "text", "hi")
    assert event.raw["NumSegments"] == "1"


def test_evolution_message_type_names_the_content_when_the_message_is_trimmed() -> None:
    body = load("evolution/messages-upsert.json")
    body["data"]["message"] = {}
    body["data"]["messageType"] = "stickerMessage"
    (event,) = parse_body("evolution", body)
    assert (event.type, event.text, event.media) == ("sticker", None, None)
    body["data"]["messageType"] = "somethingNew"
    assert parse_body("evolution", body)[0].type == "unknown"


def test_negative_baileys_file_length_is_no_size() -> None:
    body = load("wasender/messages-upsert-image.json")
    body["data"]["message"]["imageMessage"]["fileLength"] = {"low": -5, "high": 0}
    (event,) = parse_body("wasender", body)
    assert event.media is not None
    assert event.media["size"] is None


def test_superscript_digits_are_not_numbers() -> None:
    fields = "MessageSid=SMsup&Body=hi&NumMedia=%C2%B2&MediaUrl0=https%3A%2F%2Fx"
    request = InboundRequest("POST", "https://h/webhooks/s", {}, fields.encode(), FORM)
    event = PROVIDERS["twilio"].parse(request, "s", SourceSettings(provider="twilio"))[0]
    assert (event.type, event.media) == ("text", None)


def test_json_nested_past_the_limit_is_rejected_and_shallower_is_kept() -> None:
    deep = {"event": "x", "data": json.loads("[" * 99 + "]" * 99)}
    assert parse_body("wasender", deep)[0].kind == "system"
    with pytest.raises(ParseError):
        parse_body("wasender", {"event": "x", "data": json.loads("[" * 100 + "]" * 100)})


def test_evolution_system_events_never_carry_the_apikey_to_sinks() -> None:
    from wahookd.providers import InboundRequest
    from wahookd.providers.evolution import EvolutionProvider
    from wahookd.settings import SourceSettings

    body = json.dumps(
        {
            "event": "connection.update",
            "instance": "inst1",
            "data": {"state": "open"},
            "date_time": "2024-05-29T10:00:00.000Z",
            "apikey": "evtok",
        }
    ).encode()
    request = InboundRequest(method="POST", url="", headers={}, body=body, content_type="application/json")
    [event] = EvolutionProvider().parse(request, "evo", SourceSettings(provider="evolution", secret="evtok"))
    assert event.kind == "system"
    assert "evtok" not in json.dumps(event.to_dict())


def test_meta_errors_on_unsupported_messages_and_change_values_are_kept() -> None:
    from wahookd.providers import InboundRequest
    from wahookd.providers.meta import MetaProvider
    from wahookd.settings import SourceSettings

    message = {
        "from": "16505551234",
        "id": "wamid.U",
        "timestamp": "1700000000",
        "type": "unsupported",
        "errors": [{"code": 131051, "title": "Message type unknown"}],
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1"},
        "messages": [message],
        "errors": [{"code": 131000, "title": "Something went wrong", "message": "later"}],
    }
    change = {"field": "messages", "value": value}
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]})
    request = InboundRequest(
        method="POST", url="", headers={}, body=body.encode(), content_type="application/json"
    )
    unsupported, system = MetaProvider().parse(request, "fb", SourceSettings(provider="meta", secret="x"))
    assert unsupported.type == "unknown"
    assert unsupported.error == {"code": "131051", "title": "Message type unknown", "message": None}
    assert system.kind == "system"
    assert system.error == {"code": "131000", "title": "Something went wrong", "message": "later"}
