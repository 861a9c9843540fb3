# ruff: noqa: E501 - the EXPECTED table keeps one event per line
"""Every fixture through its provider: every normalized field of every event (SPEC §4).

`EXPECTED` lists each event's non-null fields (besides source, provider, raw and
received_at, checked apart); a field missing here must be null in the event, so the new
fields (`ref_message_id`, `reply_to`, `from_lid`, `from_user_id`, `poll`, `call`,
`referral`) are checked for every provider that carries them. Every fixture names where its
shape is published in `fixtures/README.md`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wahookd.errors import ParseError
from wahookd.events import CALL_STATUSES, KINDS, MESSAGE_TYPES, STATUSES, Event, new_media
from wahookd.providers import InboundRequest, Provider
from wahookd.providers.builtin import wahookd_register_providers
from wahookd.providers.waha import bare_id
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
    "evolution/call.json": [
        {'id': '6A2C1E5B8D3F4A7C9E0B1D2F3A4C5E6B:offer', 'kind': 'call', 'event': 'call', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'call': {'id': '6A2C1E5B8D3F4A7C9E0B1D2F3A4C5E6B', 'status': 'offer', 'video': False, 'duration': None}, 'timestamp': '2024-05-29T16:44:00Z'},
    ],
    "evolution/connection-update.json": [
        {'id': 'e3490bace08079bde1244a960270e522', 'kind': 'system', 'event': 'connection.update', 'timestamp': '2024-05-29T09:00:00Z'},
    ],
    "evolution/group-participants-update.json": [
        {'id': '142c3dc24bee1c728067e6aacc22ffc8', 'kind': 'system', 'event': 'group-participants.update', 'chat_id': '120363025246125486@g.us', 'timestamp': '2024-05-29T16:45:00Z'},
    ],
    "evolution/messages-delete.json": [
        {'id': '3EB0C767D26A1D4E6F:revoke', 'kind': 'message', 'event': 'messages.delete', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'revoke', 'ref_message_id': '3EB0C767D26A1D4E6F', 'timestamp': '2024-05-29T16:41:00Z'},
    ],
    "evolution/messages-edited.json": [
        {'id': '3EB0C767D26A1D4E6F:edit:1716999700000', 'kind': 'message', 'event': 'messages.edited', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'edit', 'text': 'oi, tudo bem?', 'ref_message_id': '3EB0C767D26A1D4E6F', 'timestamp': '2024-05-29T16:21:40Z'},
    ],
    "evolution/messages-update-deleted.json": [
        {'id': '3EB0AABBCCDE:revoke', 'kind': 'message', 'event': 'messages.update', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'type': 'revoke', 'ref_message_id': '3EB0AABBCCDE', 'timestamp': '2024-05-29T16:42:00Z'},
    ],
    "evolution/messages-update-poll.json": [
        {'id': 'd10850ab80f3c0b6fcb2a870bd7d0d60', 'kind': 'message', 'event': 'messages.update', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'type': 'poll_vote', 'ref_message_id': '3EB0POLL00000001', 'poll': {'question': None, 'options': [{'name': 'Sexta', 'votes': 1}, {'name': 'Sábado', 'votes': 0}], 'votes': ['Sexta']}, 'timestamp': '2024-05-29T16:43:00Z'},
    ],
    "evolution/messages-update-read.json": [
        {'id': '3EB0AABBCCDD:read', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0AABBCCDD', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2024-05-29T10:01:00Z'},
    ],
    "evolution/messages-update-v1.json": [
        {'id': '3EB0EVOV1:delivered', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0EVOV1', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'status': 'delivered', 'timestamp': '2024-05-29T10:04:00Z'},
        {'id': '3EB0EVOV1:read', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0EVOV1', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2024-05-29T10:04:00Z'},
    ],
    "evolution/messages-upsert-poll.json": [
        {'id': '3EB0POLL00000001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0POLL00000001', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'sender_name': 'Loja', 'type': 'poll', 'text': 'Que dia?', 'poll': {'question': 'Que dia?', 'options': ['Sexta', 'Sábado'], 'votes': None}, 'timestamp': '2024-05-29T16:25:00Z'},
    ],
    "evolution/messages-upsert-reaction-removed.json": [
        {'id': '3EB0REACTRM00001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0REACTRM00001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'reaction', 'text': '', 'ref_message_id': '3EB0EVOSENT1', 'timestamp': '2024-05-29T16:23:20Z'},
    ],
    "evolution/messages-upsert-reply-ad.json": [
        {'id': '3EB0ADREPLY00001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0ADREPLY00001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'Quero saber mais', 'reply_to': '3EB0EVOSENT1', 'from_lid': '209876543212345@lid', 'referral': {'title': 'Promoção de inverno', 'body': 'Frete grátis', 'media_type': 'IMAGE', 'thumbnail_url': 'https://scontent.xx.fbcdn.net/v/t45.1600-4/thumb.jpg', 'source_type': 'ad', 'source_id': '120208734567890123', 'source_url': 'https://fb.me/3cr4Wqqkk', 'ctwa_clid': 'ARAkLkA8rmlFeiCktEJQ', 'contains_auto_reply': False, 'render_larger_thumbnail': True, 'show_ad_attribution': True}, 'timestamp': '2024-05-29T16:26:40Z'},
    ],
    "evolution/messages-upsert-voice-uppercase.json": [
        {'id': '3EB0EVOVOICE1', 'kind': 'message', 'event': 'MESSAGES_UPSERT', 'message_id': '3EB0EVOVOICE1', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'voice', 'media': MEDIA('audio/ogg; codecs=opus', None, 4096), 'timestamp': '2024-05-29T16:28:20Z'},
    ],
    "evolution/messages-upsert.json": [
        {'id': '3EB0C767D26A1D4E6F', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0C767D26A1D4E6F', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'oi', 'timestamp': '2024-05-29T16:26:40Z'},
    ],
    "evolution/send-message.json": [
        {'id': '3EB0EVOSENT1', 'kind': 'message', 'event': 'send.message', 'message_id': '3EB0EVOSENT1', 'chat_id': '5511999999999', 'from': '5511888888888', 'to': '5511999999999', 'from_me': True, 'type': 'text', 'text': 'thanks!', 'timestamp': '2024-05-29T16:30:00Z'},
    ],
    "meta/account-update.json": [
        {'id': 'cc8146f9b9af40f65a68fdeb00548159', 'kind': 'system', 'event': 'account_update', 'timestamp': '2022-01-04T21:08:18Z'},
        {'id': 'fe0bba6267523b9c757f8bd00613fdf1', 'kind': 'system', 'event': 'account_update', 'timestamp': '2025-05-29T00:09:19Z'},
    ],
    "meta/batch.json": [
        {'id': 'wamid.BATCH1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.BATCH1', 'chat_id': '5511999999999', 'from': '5511999999999', 'to': '15550783881', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'first', 'timestamp': '2025-06-08T20:59:43Z'},
        {'id': 'wamid.BATCH2', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.BATCH2', 'chat_id': '4917612345678', 'from': '4917612345678', 'to': '15550783881', 'from_me': False, 'sender_name': 'Bo', 'type': 'voice', 'media': MEDIA('audio/ogg; codecs=opus', None, None), 'timestamp': '2025-06-08T20:59:44Z'},
        {'id': 'wamid.OUT9:read', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT9', 'chat_id': '5511999999999', 'from': '15550783881', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2025-06-08T20:59:45Z'},
        {'id': 'wamid.OUT9:delivered', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT9', 'chat_id': '5511999999999', 'from': '15550783881', 'to': '5511999999999', 'from_me': True, 'status': 'delivered', 'timestamp': '2025-06-08T20:59:40Z'},
        {'id': '70a2ad6f41609ced3549f6190f1796d3', 'kind': 'system', 'event': 'message_template_status_update'},
    ],
    "meta/bsuid.json": [
        {'id': 'wamid.BSUID1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.BSUID1', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'text', 'text': 'Hey', 'from_user_id': 'US.13491208655302741918', 'timestamp': '2026-05-21T14:13:25Z'},
        {'id': 'wamid.BSUID2', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.BSUID2', 'chat_id': 'US.15482375592381029384', 'to': '15550783881', 'from_me': False, 'sender_name': 'Bo', 'type': 'text', 'text': 'no number', 'from_user_id': 'US.15482375592381029384', 'timestamp': '2026-05-21T14:13:26Z'},
    ],
    "meta/calls-connect.json": [
        {'id': 'wacid.USERCALL1=:offer', 'kind': 'call', 'event': 'calls', 'chat_id': '972987654321', 'from': '972987654321', 'to': '16315553601', 'from_me': False, 'sender_name': 'Test Name', 'from_user_id': 'US.13491208655302741918', 'call': {'id': 'wacid.USERCALL1=', 'status': 'offer', 'video': None, 'duration': None}, 'timestamp': '2025-07-15T12:38:27Z'},
        {'id': 'wacid.BIZCALL1=:accepted', 'kind': 'call', 'event': 'calls', 'chat_id': '972987654321', 'from': '16315553601', 'to': '972987654321', 'from_me': True, 'call': {'id': 'wacid.BIZCALL1=', 'status': 'accepted', 'video': None, 'duration': None}, 'timestamp': '2025-07-15T12:35:33Z'},
    ],
    "meta/calls-status.json": [
        {'id': 'wacid.ABGGFjFVU2AfAgo6V:ringing', 'kind': 'call', 'event': 'calls', 'chat_id': '163155536021', 'from': '16315553601', 'to': '163155536021', 'from_me': True, 'call': {'id': 'wacid.ABGGFjFVU2AfAgo6V', 'status': 'ringing', 'video': None, 'duration': None}, 'timestamp': '2022-12-21T17:47:04Z'},
    ],
    "meta/calls-terminate-failed.json": [
        {'id': 'wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gi:failed', 'kind': 'call', 'event': 'calls', 'chat_id': '16315553601', 'from': '16315553601', 'to': '13175551399', 'from_me': False, 'call': {'id': 'wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gi', 'status': 'failed', 'video': None, 'duration': 480}, 'timestamp': '2025-06-06T08:11:20Z'},
    ],
    "meta/calls-terminate.json": [
        {'id': 'wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh:ended', 'kind': 'call', 'event': 'calls', 'chat_id': '16315553601', 'from': '16315553602', 'to': '16315553601', 'from_me': True, 'error': {'code': '12455', 'title': None, 'message': 'ERROR_TITLE'}, 'call': {'id': 'wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh', 'status': 'ended', 'video': None, 'duration': 120}, 'timestamp': '2022-12-21T17:47:04Z'},
        {'id': '6810f8759e7c59eba807b1d1c50ff799', 'kind': 'system', 'event': 'calls', 'error': {'code': '12455', 'title': None, 'message': 'ERROR_TITLE'}},
    ],
    "meta/echo.json": [
        {'id': 'wamid.ECHO1', 'kind': 'message', 'event': 'smb_message_echoes', 'message_id': 'wamid.ECHO1', 'chat_id': '16505551234', 'from': '15550783881', 'to': '16505551234', 'from_me': True, 'type': 'text', 'text': 'sent from the app', 'timestamp': '2023-11-14T22:16:40Z'},
    ],
    "meta/edit.json": [
        {'id': 'wamid.EDIT1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.EDIT1', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'edit', 'text': 'Text was edited', 'ref_message_id': 'wamid.zzzzzz', 'timestamp': '2023-10-11T17:22:48Z'},
        {'id': 'wamid.EDIT2', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.EDIT2', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'edit', 'text': 'caption', 'ref_message_id': 'wamid.zzzzzy', 'timestamp': '2023-10-11T17:22:49Z'},
    ],
    "meta/group-lifecycle-update.json": [
        {'id': 'e0ed60cea78d2efb8061a7ebc6d54dc7', 'kind': 'system', 'event': 'group_lifecycle_update', 'chat_id': 'Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD', 'timestamp': '2025-02-12T00:44:00Z'},
    ],
    "meta/group-messages.json": [
        {'id': 'wamid.GROUPIN1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.GROUPIN1', 'chat_id': 'Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'text', 'text': 'What do you all think about this?', 'timestamp': '2025-02-12T00:43:44Z'},
        {'id': 'wamid.GROUPOUT1:sent', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.GROUPOUT1', 'chat_id': 'Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD', 'from': '15550783881', 'to': 'Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD', 'from_me': True, 'status': 'sent', 'timestamp': '2025-02-12T00:43:45Z'},
        {'id': 'wamid.GROUPOUT1:read:16505551234', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.GROUPOUT1', 'chat_id': 'Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD', 'from': '15550783881', 'to': '16505551234', 'from_me': True, 'status': 'read', 'timestamp': '2025-02-12T00:43:50Z'},
    ],
    "meta/image.json": [
        {'id': 'wamid.IMAGE0001', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.IMAGE0001', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'image', 'text': 'receipt', 'media': MEDIA('image/jpeg', None, None), 'timestamp': '2025-06-08T21:00:00Z'},
    ],
    "meta/order.json": [
        {'id': 'wamid.ORDER1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.ORDER1', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'order', 'timestamp': '2023-10-11T17:17:48Z'},
    ],
    "meta/reactions.json": [
        {'id': 'wamid.REACT1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.REACT1', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'reaction', 'text': '😮', 'ref_message_id': 'wamid.yzxyzx=', 'timestamp': '2023-10-11T17:14:16Z'},
        {'id': 'wamid.REACT2', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.REACT2', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'reaction', 'text': '', 'ref_message_id': 'wamid.yzxyzx=', 'timestamp': '2023-10-11T17:14:16Z'},
        {'id': 'wamid.REACT3', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.REACT3', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'reaction', 'text': '', 'ref_message_id': 'wamid.yzxyzx=', 'timestamp': '2023-10-11T17:14:16Z'},
    ],
    "meta/referral.json": [
        {'id': 'wamid.REFERRAL1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.REFERRAL1', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'text', 'text': 'BODY', 'referral': {'source_url': 'AD_OR_POST_FB_URL', 'source_id': 'ADID', 'source_type': 'ad or post', 'headline': 'AD_TITLE', 'body': 'AD_DESCRIPTION', 'media_type': 'image or video', 'image_url': 'RAW_IMAGE_URL', 'video_url': 'RAW_VIDEO_URL', 'thumbnail_url': 'RAW_THUMBNAIL_URL', 'ctwa_clid': 'CTWA_CLID'}, 'timestamp': '2023-10-11T17:23:20Z'},
    ],
    "meta/reply.json": [
        {'id': 'wamid.REPLY1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.REPLY1', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'sender_name': 'Test Name', 'type': 'text', 'text': 'replied text', 'reply_to': 'wamid.xyzxyz==', 'timestamp': '2023-10-11T17:19:06Z'},
    ],
    "meta/revoke.json": [
        {'id': 'wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'revoke', 'ref_message_id': 'wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUYzMDM3N0Q2QUI3NTk3MjEwMAA=', 'from_user_id': 'US.13491208655302741918', 'timestamp': '2025-02-12T00:43:44Z'},
    ],
    "meta/status-delivered.json": [
        {'id': 'wamid.OUT0001:delivered', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT0001', 'chat_id': '16505551234', 'from': '15550783881', 'to': '16505551234', 'from_me': True, 'status': 'delivered', 'timestamp': '2025-06-08T21:01:40Z'},
    ],
    "meta/status-failed.json": [
        {'id': 'wamid.OUT0002:failed', 'kind': 'status', 'event': 'statuses', 'message_id': 'wamid.OUT0002', 'chat_id': '16505551234', 'from': '15550783881', 'to': '16505551234', 'from_me': True, 'status': 'failed', 'error': {'code': '130472', 'title': "User's number is part of an experiment", 'message': "User's number is part of an experiment"}, 'timestamp': '2023-07-15T00:20:58Z'},
    ],
    "meta/system-messages.json": [
        {'id': 'wamid.SYSTEM1', 'kind': 'system', 'event': 'messages', 'message_id': 'wamid.SYSTEM1', 'chat_id': '972987654321', 'from': '972987654321', 'to': '972123456789', 'from_me': False, 'text': 'User A changed from 972987654321 to 972912345678', 'timestamp': '2025-07-30T04:55:15Z'},
        {'id': 'wamid.SYSTEM2', 'kind': 'system', 'event': 'messages', 'message_id': 'wamid.SYSTEM2', 'to': '972123456789', 'from_me': False, 'text': 'User changed from CO.1234567890 to MX.0987654321', 'timestamp': '2025-07-30T04:55:16Z'},
    ],
    "meta/template-status-update.json": [
        {'id': '27559c41a80860ab980e8099098a6480', 'kind': 'system', 'event': 'message_template_status_update', 'timestamp': '2023-10-25T21:06:40Z'},
    ],
    "meta/text.json": [
        {'id': 'wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'text', 'text': 'Does it come in another color?', 'timestamp': '2025-06-08T20:59:43Z'},
    ],
    "meta/types.json": [
        {'id': 'wamid.T_VIDEO', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_VIDEO', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'video', 'text': 'clip', 'media': MEDIA('video/mp4', None, None), 'timestamp': '2023-11-14T22:13:21Z'},
        {'id': 'wamid.T_DOC', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_DOC', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'document', 'text': 'your invoice', 'media': MEDIA('application/pdf', 'invoice.pdf', None), 'timestamp': '2023-11-14T22:13:22Z'},
        {'id': 'wamid.T_STICKER', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_STICKER', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'sticker', 'media': MEDIA('image/webp', None, None), 'timestamp': '2023-11-14T22:13:23Z'},
        {'id': 'wamid.T_AUDIO', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_AUDIO', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'audio', 'media': MEDIA('audio/mpeg', None, None), 'timestamp': '2023-11-14T22:13:24Z'},
        {'id': 'wamid.T_LOC', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_LOC', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'location', 'text': 'Shop', 'timestamp': '2023-11-14T22:13:25Z'},
        {'id': 'wamid.T_CONTACTS', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_CONTACTS', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'contacts', 'timestamp': '2023-11-14T22:13:26Z'},
        {'id': 'wamid.T_BTNREPLY', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_BTNREPLY', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'interactive', 'text': 'Yes please', 'timestamp': '2023-11-14T22:13:27Z'},
        {'id': 'wamid.T_LISTREPLY', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_LISTREPLY', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'interactive', 'text': 'Blue', 'timestamp': '2023-11-14T22:13:28Z'},
        {'id': 'wamid.T_BUTTON', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_BUTTON', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'button', 'text': 'Stop promotions', 'reply_to': 'wamid.TPL', 'timestamp': '2023-11-14T22:13:29Z'},
        {'id': 'wamid.T_REACTION', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_REACTION', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'reaction', 'text': '👍', 'ref_message_id': 'wamid.OUT1', 'timestamp': '2023-11-14T22:13:30Z'},
        {'id': 'wamid.T_ORDER', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_ORDER', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'order', 'timestamp': '2023-11-14T22:13:31Z'},
        {'id': 'wamid.T_UNSUPPORTED', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.T_UNSUPPORTED', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena Nelson', 'type': 'unknown', 'error': {'code': '131051', 'title': 'Message type unknown', 'message': None}, 'timestamp': '2023-11-14T22:13:32Z'},
    ],
    "meta/unicode-escaped.json": [
        {'id': 'wamid.UNICODE1', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.UNICODE1', 'chat_id': '34600111222', 'from': '34600111222', 'to': '15550783881', 'from_me': False, 'sender_name': 'José Müller', 'type': 'text', 'text': '¿Tienen café? ☕😀', 'timestamp': '2023-11-14T22:15:00Z'},
    ],
    "standard/forwarded-call.json": [
        {'id': 'msg_fixture', 'kind': 'call', 'event': 'calls', 'chat_id': '16315553601', 'from': '16315553602', 'to': '16315553601', 'from_me': True, 'call': {'id': 'wacid.X', 'status': 'ended', 'video': None, 'duration': 120}, 'timestamp': '2022-12-21T17:47:04Z'},
    ],
    "standard/forwarded-event.json": [
        {'id': 'msg_fixture', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.FWD1', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena', 'type': 'image', 'text': 'receipt', 'media': {'mime_type': 'image/jpeg', 'filename': None, 'size': 10, 'sha256': 'ab', 'stored': {'bucket': 'b', 'key': 'k', 'url': 's3://b/k'}, 'error': None}, 'timestamp': '2025-06-08T21:00:00Z'},
    ],
    "standard/forwarded-image.json": [
        {'id': 'msg_fixture', 'kind': 'message', 'event': 'messages', 'message_id': 'wamid.FWD2', 'chat_id': '16505551234', 'from': '16505551234', 'to': '15550783881', 'from_me': False, 'sender_name': 'Sheena', 'type': 'image', 'text': 'receipt', 'media': {'mime_type': 'image/jpeg', 'filename': 'ab12.jpg', 'size': 10, 'sha256': 'ab12', 'stored': {'bucket': 'whatsapp-media', 'key': 'cloud/2025/06/08/ab12.jpg', 'url': 's3://whatsapp-media/cloud/2025/06/08/ab12.jpg'}, 'error': None}, 'reply_to': 'wamid.ASK1', 'from_user_id': 'US.13491208655302741918', 'referral': {'source_type': 'ad', 'ctwa_clid': 'ARAk'}, 'timestamp': '2025-06-08T21:00:00.250Z'},
    ],
    "standard/forwarded-reaction.json": [
        {'id': 'msg_fixture', 'kind': 'message', 'event': 'messages.reaction', 'message_id': '3EB0REACTRM0002', 'chat_id': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'reaction', 'text': '', 'ref_message_id': '3EB0OUT0000001', 'from_lid': '209876543212345@lid', 'timestamp': '2025-05-20T21:10:30.123Z'},
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
    "twilio/referral.form": [
        {'id': 'SM7a1b2c3d4e5f60718293a4b5c6d7e8f9', 'kind': 'message', 'event': 'message', 'message_id': 'SM7a1b2c3d4e5f60718293a4b5c6d7e8f9', 'chat_id': '14155238886', 'from': '14155238886', 'to': '15005550006', 'from_me': False, 'sender_name': 'Jane', 'type': 'text', 'text': 'Hi! I saw your ad', 'referral': {'body': 'Our spring collection is here', 'headline': 'Spring sale', 'source_id': '120208734567890123', 'source_type': 'ad', 'source_url': 'https://fb.me/3cr4Wqqkk', 'media_id': '1257437698574937', 'media_content_type': 'image/jpeg', 'media_url': 'https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM7a1b2c3d4e5f60718293a4b5c6d7e8f9/Media/ME0123456789abcdef0123456789abcdee', 'num_media': '1', 'ctwa_clid': 'ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-ZABDLfPRW5cl2C'}},
    ],
    "twilio/reply.form": [
        {'id': 'SM8b2c3d4e5f60718293a4b5c6d7e8f9a0', 'kind': 'message', 'event': 'message', 'message_id': 'SM8b2c3d4e5f60718293a4b5c6d7e8f9a0', 'chat_id': '14155238886', 'from': '14155238886', 'to': '15005550006', 'from_me': False, 'sender_name': 'Jane', 'type': 'text', 'text': 'Yes, the blue one', 'reply_to': 'SM0123456789abcdef0123456789abcdef'},
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
    "waha/call-received.json": [
        {'id': 'ABCDEFGABCDEFGABCDEFGABCDEFG:offer', 'kind': 'call', 'event': 'call.received', 'chat_id': '11111111111', 'from': '11111111111', 'call': {'id': 'ABCDEFGABCDEFGABCDEFGABCDEFG', 'status': 'offer', 'video': False, 'duration': None}, 'timestamp': '2024-04-26T09:39:04Z'},
    ],
    "waha/call-rejected.json": [
        {'id': 'ABCDEFGABCDEFGABCDEFGABCDEFG:rejected', 'kind': 'call', 'event': 'call.rejected', 'chat_id': '209876543212345@lid', 'from_lid': '209876543212345@lid', 'call': {'id': 'ABCDEFGABCDEFGABCDEFGABCDEFG', 'status': 'rejected', 'video': True, 'duration': None}, 'timestamp': '2024-04-26T09:39:10Z'},
    ],
    "waha/group-v2-participants.json": [
        {'id': '57b1524ba14bb1986dbdcb9ff4c78ee4', 'kind': 'system', 'event': 'group.v2.participants', 'chat_id': '120363025246125486@g.us', 'timestamp': '2022-10-28T07:53:02Z'},
    ],
    "waha/message-ack-failed.json": [
        {'id': 'FFFFFFFF:failed', 'kind': 'status', 'event': 'message.ack', 'message_id': 'true_11111111111@c.us_FFFFFFFF', 'chat_id': '11111111111', 'to': '11111111111', 'from_me': True, 'status': 'failed', 'error': {'code': 'ERROR', 'message': None}},
    ],
    "waha/message-ack-group.json": [
        {'id': '3EB0AC0FFEE00001:read:33333333333', 'kind': 'status', 'event': 'message.ack.group', 'message_id': 'true_120363025246125486@g.us_3EB0AC0FFEE00001', 'chat_id': '120363025246125486@g.us', 'to': '33333333333', 'from_me': True, 'status': 'read'},
    ],
    "waha/message-ack-read.json": [
        {'id': '4CC5EDD64BC22EBA6D639F2AF571346C:read', 'kind': 'status', 'event': 'message.ack', 'message_id': 'true_11111111111@c.us_4CC5EDD64BC22EBA6D639F2AF571346C', 'chat_id': '11111111111', 'to': '11111111111', 'from_me': True, 'status': 'read'},
    ],
    "waha/message-edited.json": [
        {'id': '3EB0A1B2C3D4E5F60718:edit:3EB0F1E2D3C4B5A69788', 'kind': 'message', 'event': 'message.edited', 'message_id': 'false_11111111111@c.us_3EB0F1E2D3C4B5A69788', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'edit', 'text': 'see you at 8, not 7', 'ref_message_id': 'false_11111111111@c.us_3EB0A1B2C3D4E5F60718', 'timestamp': '2022-11-04T11:40:00Z'},
    ],
    "waha/message-group-lid.json": [
        {'id': '3DCB1F5DF33062A533AE947FD5AE7140', 'kind': 'message', 'event': 'message', 'message_id': 'false_120363420500389503@g.us_3DCB1F5DF33062A533AE947FD5AE7140_172078351257794@lid', 'chat_id': '120363420500389503@g.us', 'from': '8613912345678', 'to': '120363420500389503@g.us', 'from_me': False, 'sender_name': 'leo', 'type': 'text', 'text': '测试信息', 'from_lid': '172078351257794@lid', 'timestamp': '2025-06-17T07:04:43Z'},
    ],
    "waha/message-group.json": [
        {'id': 'CCCCCCCC', 'kind': 'message', 'event': 'message.any', 'message_id': 'false_120363025246125486@g.us_CCCCCCCC_33333333333@c.us', 'chat_id': '120363025246125486@g.us', 'from': '33333333333', 'to': '22222222222', 'from_me': False, 'type': 'text', 'text': 'hello all', 'timestamp': '2022-11-04T11:35:00Z'},
    ],
    "waha/message-image.json": [
        {'id': 'BBBBBBBBBBBBBBBB', 'kind': 'message', 'event': 'message', 'message_id': 'false_11111111111@c.us_BBBBBBBBBBBBBBBB', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'sender_name': 'Jane', 'type': 'image', 'text': 'look', 'media': MEDIA('image/jpeg', None, None), 'timestamp': '2022-11-04T11:31:40Z'},
    ],
    "waha/message-newsletter.json": [
        {'id': '3EB0CHANNEL000001', 'kind': 'message', 'event': 'message', 'message_id': 'false_120363170100000000@newsletter_3EB0CHANNEL000001', 'chat_id': '120363170100000000@newsletter', 'from_me': False, 'type': 'text', 'text': 'New opening hours from Monday', 'timestamp': '2022-11-04T11:45:00Z'},
    ],
    "waha/message-noweb-voice.json": [
        {'id': '3EB0NOWEB01', 'kind': 'message', 'event': 'message', 'message_id': 'false_11111111111@c.us_3EB0NOWEB01', 'chat_id': '11111111111', 'from': '11111111111', 'from_me': False, 'sender_name': 'Jane', 'type': 'voice', 'media': MEDIA('audio/ogg; codecs=opus', None, None), 'timestamp': '2022-11-04T11:33:20Z'},
    ],
    "waha/message-reaction-removed.json": [
        {'id': '3EB0DEADBEEF0001', 'kind': 'message', 'event': 'message.reaction', 'message_id': 'false_11111111111@c.us_3EB0DEADBEEF0001', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'reaction', 'text': '', 'ref_message_id': 'true_11111111111@c.us_EEEEEEEE', 'timestamp': '2022-11-04T11:37:30Z'},
    ],
    "waha/message-reaction.json": [
        {'id': 'DDDDDDDD', 'kind': 'message', 'event': 'message.reaction', 'message_id': 'false_11111111111@c.us_DDDDDDDD', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'reaction', 'text': '🙏', 'ref_message_id': 'true_11111111111@c.us_EEEEEEEE', 'timestamp': '2022-11-04T11:36:40Z'},
    ],
    "waha/message-reply.json": [
        {'id': '3EB0REPLY0000001', 'kind': 'message', 'event': 'message', 'message_id': 'false_11111111111@c.us_3EB0REPLY0000001', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'text', 'text': 'yes please', 'reply_to': 'true_11111111111@c.us_3EB0ASK000000001', 'timestamp': '2022-11-04T11:43:20Z'},
    ],
    "waha/message-revoked.json": [
        {'id': 'A06CA7BB5AD8C8D9BC7A7D5D2DA24A16:revoke', 'kind': 'message', 'event': 'message.revoked', 'message_id': 'false_11111111111@c.us_3EB0C9D2E7F1A4B5C6D7', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'revoke', 'ref_message_id': 'false_11111111111@c.us_A06CA7BB5AD8C8D9BC7A7D5D2DA24A16', 'timestamp': '2022-11-04T11:38:20Z'},
    ],
    "waha/message-twice-cus.json": [
        {'id': 'AC2AB3184AC4AEB3E0527911B838398F', 'kind': 'message', 'event': 'message', 'message_id': 'false_5511987652504@c.us_AC2AB3184AC4AEB3E0527911B838398F', 'chat_id': '5511987652504', 'from': '5511987652504', 'from_me': False, 'type': 'text', 'text': 'Oi', 'timestamp': '2025-11-17T16:22:58Z'},
    ],
    "waha/message-twice-lid.json": [
        {'id': 'AC2AB3184AC4AEB3E0527911B838398F', 'kind': 'message', 'event': 'message', 'message_id': 'false_209876543212345@lid_AC2AB3184AC4AEB3E0527911B838398F', 'chat_id': '209876543212345@lid', 'from_me': False, 'type': 'text', 'text': 'Oi', 'from_lid': '209876543212345@lid', 'timestamp': '2025-11-17T16:22:58Z'},
    ],
    "waha/message.json": [
        {'id': 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'kind': 'message', 'event': 'message', 'message_id': 'false_11111111111@c.us_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', 'chat_id': '11111111111', 'from': '11111111111', 'to': '22222222222', 'from_me': False, 'type': 'text', 'text': 'Hi there!', 'timestamp': '2022-11-04T11:31:25Z'},
    ],
    "waha/poll-vote-failed.json": [
        {'id': '2E8C4CDA89EDE3BC0BC7F605364B8451', 'kind': 'message', 'event': 'poll.vote.failed', 'message_id': 'false_11111111111@c.us_2E8C4CDA89EDE3BC0BC7F605364B8451', 'chat_id': '11111111111', 'from': '111111111', 'from_me': False, 'type': 'poll_vote', 'ref_message_id': 'true_1111111111@c.us_BAE595F4E0A2042C', 'poll': {'question': None, 'options': None, 'votes': None}, 'timestamp': '2023-08-25T09:49:32Z'},
    ],
    "waha/poll-vote.json": [
        {'id': '1C18A7EAADD2A8D0324755D241C4238A', 'kind': 'message', 'event': 'poll.vote', 'message_id': 'false_3333333333333@g.us_1C18A7EAADD2A8D0324755D241C4238A', 'chat_id': '3333333333333@g.us', 'from': '1111111111', 'to': '3333333333333@g.us', 'from_me': False, 'type': 'poll_vote', 'ref_message_id': 'true_3333333333333@g.us_BAE5304BA1ECF704', 'poll': {'question': None, 'options': None, 'votes': ['Awesome!']}, 'timestamp': '2023-08-24T07:17:07Z'},
    ],
    "waha/presence-update.json": [
        {'id': '7f51bf49b61ab03271b7d5e06b71ad74', 'kind': 'system', 'event': 'presence.update', 'chat_id': '111111111111111111@g.us'},
    ],
    "waha/session-status.json": [
        {'id': 'fee5977f3454c596e07930da0800a07b', 'kind': 'system', 'event': 'session.status'},
    ],
    "wasender/chats-upsert.json": [
        {'id': '1444d5e647194eca49927aba710c3a7e', 'kind': 'system', 'event': 'chats.upsert', 'chat_id': '5511999999999', 'timestamp': '2025-05-20T21:10:31Z'},
    ],
    "wasender/group-participants-update.json": [
        {'id': '7ea61cb41e4400c5b2a9abcc4f0c9faa', 'kind': 'system', 'event': 'group-participants.update', 'chat_id': '120363025246125486@g.us', 'timestamp': '2025-05-20T21:21:40Z'},
    ],
    "wasender/message-personal-received.json": [
        {'id': '3EB0ALT0000002', 'kind': 'message', 'event': 'message.personal.received', 'message_id': '3EB0ALT0000002', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'text', 'text': 'second spelling', 'timestamp': '2025-05-20T21:10:32Z'},
    ],
    "wasender/message-receipt-update-nested.json": [
        {'id': '3EB0OUT0000006:delivered:4917612345678', 'kind': 'status', 'event': 'message-receipt.update', 'message_id': '3EB0OUT0000006', 'chat_id': '120363025246125486@g.us', 'to': '4917612345678', 'from_me': True, 'status': 'delivered', 'timestamp': '2025-05-20T21:10:31Z'},
    ],
    "wasender/message-receipt-update.json": [
        {'id': '3EB0OUT0000005:read:5511999999999', 'kind': 'status', 'event': 'message-receipt.update', 'message_id': '3EB0OUT0000005', 'chat_id': '120363025246125486@g.us', 'to': '5511999999999', 'from_me': True, 'status': 'read', 'timestamp': '2025-05-20T21:10:30Z'},
    ],
    "wasender/messages-delete.json": [
        {'id': '3EB0ORIG0000002:revoke', 'kind': 'message', 'event': 'messages.delete', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'revoke', 'ref_message_id': '3EB0ORIG0000002', 'timestamp': '2025-05-20T21:13:20Z'},
    ],
    "wasender/messages-group-lid.json": [
        {'id': '3EB0GRPLID000001', 'kind': 'message', 'event': 'messages-group.received', 'message_id': '3EB0GRPLID000001', 'chat_id': '120363025246125486@g.us', 'from': '4917612345678', 'from_me': False, 'sender_name': 'Bo', 'type': 'text', 'text': '+1', 'reply_to': '3EB0GROUP001', 'from_lid': '172078351257794@lid', 'timestamp': '2025-05-20T21:18:20Z'},
    ],
    "wasender/messages-newsletter.json": [
        {'id': '3EB0NEWS00000001', 'kind': 'message', 'event': 'messages-newsletter.received', 'message_id': '3EB0NEWS00000001', 'chat_id': '120363170100000000@newsletter', 'from_me': False, 'type': 'text', 'text': 'New opening hours from Monday', 'timestamp': '2025-05-20T21:20:00Z'},
    ],
    "wasender/messages-personal-received-lid.json": [
        {'id': '3EB0LID0000001', 'kind': 'message', 'event': 'messages-personal.received', 'message_id': '3EB0LID0000001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'oi', 'from_lid': '207690000000000@lid', 'timestamp': '2025-05-20T21:10:31Z'},
    ],
    "wasender/messages-reaction-removed.json": [
        {'id': '3EB0REACTRM0002', 'kind': 'message', 'event': 'messages.reaction', 'message_id': '3EB0REACTRM0002', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'reaction', 'text': '', 'ref_message_id': '3EB0OUT0000001', 'timestamp': '2025-05-20T21:16:40.123Z'},
    ],
    "wasender/messages-reaction.json": [
        {'id': '3EB0REACT0001', 'kind': 'message', 'event': 'messages.reaction', 'message_id': '3EB0REACT0001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'reaction', 'text': '👍', 'ref_message_id': '3EB0OUT0000006', 'timestamp': '2025-05-20T21:10:30.123Z'},
    ],
    "wasender/messages-received-text.json": [
        {'id': '3EB0X123456789', 'kind': 'message', 'event': 'messages.received', 'message_id': '3EB0X123456789', 'chat_id': '1234567890', 'from': '1234567890', 'from_me': False, 'type': 'text', 'text': 'Hello, I have a question', 'from_lid': '555555555@lid', 'timestamp': '2021-10-05T17:59:49Z'},
    ],
    "wasender/messages-update-array.json": [
        {'id': '3EB0OUT0000002:sent', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000002', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'sent', 'timestamp': '2025-05-20T21:10:31.467Z'},
        {'id': '3EB0OUT0000002:delivered', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000002', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'delivered', 'timestamp': '2025-05-20T21:10:31.467Z'},
        {'id': '3EB0OUT0000003:failed', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000003', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'failed', 'error': {'code': 'ERROR', 'message': None}, 'timestamp': '2025-05-20T21:10:31.467Z'},
        {'id': '3EB0OUT0000004:played', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000004', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'status': 'played', 'timestamp': '2025-05-20T21:10:31.467Z'},
    ],
    "wasender/messages-update-changes.json": [
        {'id': '3EB0ORIG0000001:edit:1747775499000', 'kind': 'message', 'event': 'messages.update', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'edit', 'text': 'corrected text', 'ref_message_id': '3EB0ORIG0000001', 'timestamp': '2025-05-20T21:11:39Z'},
        {'id': '3EB0ORIG0000002:revoke', 'kind': 'message', 'event': 'messages.update', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'type': 'revoke', 'ref_message_id': '3EB0ORIG0000002', 'timestamp': '2025-05-20T21:11:40Z'},
        {'id': '8e0cc5134c730aedef7a646cea04f66c', 'kind': 'message', 'event': 'messages.update', 'chat_id': '5511999999999', 'to': '5511999999999', 'from_me': True, 'type': 'poll_vote', 'ref_message_id': '3EB0POLL0000001', 'poll': {'question': None, 'options': None, 'votes': None}, 'timestamp': '2025-05-20T21:11:40Z'},
    ],
    "wasender/messages-update-read.json": [
        {'id': '3EB0OUT0000001:read', 'kind': 'status', 'event': 'messages.update', 'message_id': '3EB0OUT0000001', 'chat_id': '1234567890', 'to': '1234567890', 'from_me': True, 'status': 'read', 'timestamp': '2025-05-20T21:10:31.467Z'},
    ],
    "wasender/messages-upsert-array.json": [
        {'id': '3EB0A1B2C3D4E5F6', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0A1B2C3D4E5F6', 'chat_id': '1234567890', 'from': '1234567890', 'from_me': False, 'sender_name': 'Sheena', 'type': 'text', 'text': 'Is the blue one in stock?', 'timestamp': '2021-10-05T17:59:50Z'},
    ],
    "wasender/messages-upsert-image.json": [
        {'id': '3EB0IMG0000001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0IMG0000001', 'chat_id': '1234567890', 'from': '1234567890', 'from_me': False, 'type': 'image', 'text': 'Check out this image!', 'media': MEDIA('image/jpeg', None, 13), 'timestamp': '2021-10-05T17:59:51Z'},
    ],
    "wasender/messages-upsert-protocol.json": [
        {'id': '3EB0EDITMSG00001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0EDITMSG00001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'edit', 'text': 'edited twice', 'ref_message_id': '3EB0ORIG0000003', 'timestamp': '2025-05-20T21:15:00Z'},
        {'id': '3EB0REVOKEMSG0001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0REVOKEMSG0001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'revoke', 'ref_message_id': '3EB0ORIG0000004', 'timestamp': '2025-05-20T21:15:01Z'},
        {'id': '3EB0VOTEMSG00001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0VOTEMSG00001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'poll_vote', 'ref_message_id': '3EB0POLL0000001', 'poll': {'question': None, 'options': None, 'votes': None}, 'timestamp': '2025-05-20T21:15:02Z'},
    ],
    "wasender/messages-upsert-types.json": [
        {'id': '3EB0B00000001', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000001', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'text', 'text': 'disappearing', 'timestamp': '2025-05-20T21:10:40Z'},
        {'id': '3EB0B00000002', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000002', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'video', 'text': 'vid', 'media': MEDIA('video/mp4', None, 2048), 'timestamp': '2025-05-20T21:10:41Z'},
        {'id': '3EB0B00000003', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000003', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'voice', 'media': MEDIA('audio/ogg; codecs=opus', None, 5120), 'timestamp': '2025-05-20T21:10:42Z'},
        {'id': '3EB0B00000004', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000004', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'audio', 'media': MEDIA('audio/mpeg', None, 9000), 'timestamp': '2025-05-20T21:10:43Z'},
        {'id': '3EB0B00000005', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000005', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'document', 'text': 'our menu', 'media': MEDIA('application/pdf', 'menu.pdf', 77), 'timestamp': '2025-05-20T21:10:44Z'},
        {'id': '3EB0B00000006', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000006', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'sticker', 'media': MEDIA('image/webp', None, 300), 'timestamp': '2025-05-20T21:10:45Z'},
        {'id': '3EB0B00000007', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000007', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'location', 'text': 'Loja', 'timestamp': '2025-05-20T21:10:46Z'},
        {'id': '3EB0B00000008', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000008', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'contacts', 'text': 'Jo', 'timestamp': '2025-05-20T21:10:47Z'},
        {'id': '3EB0B00000009', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000009', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'contacts', 'text': '2 contacts', 'timestamp': '2025-05-20T21:10:48Z'},
        {'id': '3EB0B00000010', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000010', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'button', 'text': 'Yes', 'timestamp': '2025-05-20T21:10:49Z'},
        {'id': '3EB0B00000011', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000011', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'interactive', 'text': 'Blue', 'timestamp': '2025-05-20T21:10:50Z'},
        {'id': '3EB0B00000012', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000012', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'button', 'text': 'Track order', 'timestamp': '2025-05-20T21:10:51Z'},
        {'id': '3EB0B00000013', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000013', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'reaction', 'text': '❤️', 'ref_message_id': '3EB0OUT1', 'timestamp': '2025-05-20T21:10:52Z'},
        {'id': '3EB0B00000014', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000014', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'poll', 'text': 'Which day?', 'poll': {'question': 'Which day?', 'options': ['Mon', 'Tue'], 'votes': None}, 'timestamp': '2025-05-20T21:10:53Z'},
        {'id': '3EB0B00000015', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000015', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'image', 'media': MEDIA('image/jpeg', None, 10), 'timestamp': '2025-05-20T21:10:54Z'},
        {'id': '3EB0B00000016', 'kind': 'message', 'event': 'messages.upsert', 'message_id': '3EB0B00000016', 'chat_id': '5511999999999', 'from': '5511999999999', 'from_me': False, 'sender_name': 'Ana', 'type': 'revoke', 'ref_message_id': '3EB0GONE', 'timestamp': '2025-05-20T21:10:55Z'},
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


def test_every_fixture_names_its_source() -> None:
    sources = (FIXTURES / "README.md").read_text()
    assert [name for name in fixture_names() if f"`{name}`" not in sources] == []


SPEC_FIELDS = [
    "id", "source", "provider", "kind", "event", "message_id", "chat_id", "from", "to", "from_me",
    "sender_name", "type", "text", "media", "status", "error", "ref_message_id", "reply_to",
    "from_lid", "from_user_id", "poll", "call", "referral", "timestamp", "received_at", "raw",
]  # fmt: skip


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_events_are_json_and_use_spec_vocabulary(name: str) -> None:
    for event in parse_fixture(name):
        record = event.to_dict()
        assert sorted(record) == sorted(SPEC_FIELDS)  # every field in every event
        assert json.loads(json.dumps(record, ensure_ascii=False)) == record
        assert record["kind"] in KINDS
        if record["kind"] == "message":
            assert record["type"] in MESSAGE_TYPES
        if record["kind"] == "status":
            assert record["status"] in STATUSES
            if record["provider"] != "standard":  # Standard Webhooks: the id is webhook-id
                # One event per status, and per group member when a member's receipt.
                # WAHA's key is the bare message id, the same whichever address WAHA used.
                key = bare_id(record["message_id"]) if record["provider"] == "waha" else record["message_id"]
                base = f"{key}:{record['status']}"
                member = record["to"] if record["to"] != record["chat_id"] else None
                assert record["id"] in (base, f"{base}:{member}")
        if record["kind"] == "call":
            assert record["call"]["status"] in CALL_STATUSES
            assert set(record["call"]) == {"id", "status", "video", "duration"}
        if record["poll"] is not None:
            assert set(record["poll"]) == {"question", "options", "votes"}
        if record["type"] in ("reaction", "edit", "revoke", "poll_vote") and record["provider"] != "standard":
            assert record["ref_message_id"]
        if record["from"] is not None:
            assert "@" not in record["from"]  # phone digits, never a LID or a group
        if record["from_lid"] is not None:
            assert record["from_lid"].endswith("@lid")


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


def test_standard_raw_is_the_body_and_forwarded_media_is_kept_as_stored() -> None:
    event = parse_fixture("standard/forwarded-event.json")[0]
    assert event.raw == load("standard/forwarded-event.json")
    assert event.media == load("standard/forwarded-event.json")["data"]["media"]


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
