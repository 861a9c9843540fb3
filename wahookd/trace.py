"""`wahookd trace ID`: everything known about one event, to answer "where is my message?".

ID is an event id (`shop:3EB0...`), its `event_ref` (the hash log lines name it by), a
provider message id, or a contact (phone digits, `+49 151 ...`, or a `...@lid` address: that
contact's latest events). For each event: when and where it came in, the normalized event,
its media, and per sink: filtered out, pending, delivered (when), retrying (attempts, next
try, last error), dead-lettered (why) or paused. Reads the journal beside a running daemon.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wahookd.events import event_ref
from wahookd.journal import JournalReader, StoredEvent
from wahookd.settings import SinkSettings, load_settings

REF = re.compile(r"^[0-9a-f]{12}$")
PHONE = re.compile(r"^\+?[\d\s().-]{6,}$")
ADDRESS = re.compile(r"^(\d+)@(s\.whatsapp\.net|c\.us)$")


def run_trace(args: argparse.Namespace) -> int:
    from wahookd.admin import open_journal

    settings, _ = load_settings(args.config, read_secrets=False)
    reader = open_journal(settings.state)
    try:
        found = find(reader, args.id.strip(), args.limit)
        tables = settings.effective_sinks()
        traced = [trace_one(reader, stored, tables, raw=args.raw) for stored in found]
        pruned = [] if traced else reader.dead_letters_of(args.id.strip())
    finally:
        reader.close()
    rejected = [] if traced or pruned else rejected_bodies(settings.state.dir / "rejected", args.id.strip())
    if args.json:
        print(json.dumps({"events": traced, "dead_letters": [dead(*row) for row in pruned]}, indent=2))
    else:
        print(render(args.id.strip(), traced, pruned, rejected))
    return 0 if traced or pruned else 1


def find(reader: JournalReader, query: str, limit: int) -> list[StoredEvent]:
    """Every kind of ID the command accepts, most specific first; each event once."""
    found: dict[int, StoredEvent] = {}

    def add(events: list[StoredEvent]) -> None:
        for stored in events:
            found.setdefault(stored.seq, stored)

    add(reader.by_id(query))
    add(reader.by_message_id(query, limit))
    if REF.match(query):
        add(reader.by_ref(query, limit))
    contact = contact_form(query)
    if contact is not None:
        add(reader.by_contact(contact, limit))
    return sorted(found.values(), key=lambda stored: stored.seq, reverse=True)[: max(limit, 1)]


def contact_form(query: str) -> str | None:
    """A contact as the event's fields write it: phone digits, or the full `...@lid`."""
    if query.endswith("@lid"):
        return query
    address = ADDRESS.match(query)
    if address:
        return address.group(1)
    if PHONE.match(query):
        return re.sub(r"\D", "", query)
    return None


def trace_one(
    reader: JournalReader, stored: StoredEvent, tables: dict[str, SinkSettings], *, raw: bool
) -> dict[str, Any]:
    event = dict(stored.event)
    if not raw:
        event.pop("raw", None)
    sinks = {name: sink_state(reader, stored, table, name) for name, table in sorted(tables.items())}
    return {
        "event": event,
        "event_ref": event_ref(str(stored.event.get("id", ""))),
        "received_at": rfc3339(stored.received_at),
        "waiting_for_media": stored.dseq is None,
        "sinks": sinks,
    }


def sink_state(reader: JournalReader, stored: StoredEvent, table: SinkSettings, name: str) -> dict[str, Any]:
    state: dict[str, Any] = {
        "status": "pending",
        "attempts": 0,
        "delivered_at": None,
        "next_try": None,
        "last_error": None,
    }
    if not table.matches(stored.event):
        state["status"] = "filtered"
        return state
    record = reader.sink_record(name, stored)
    if record.dead is not None:
        attempts, error, when = record.dead
        state.update(status="dead", attempts=attempts, last_error=error, dead_at=rfc3339(when))
    elif stored.dseq is not None and record.cursor is not None and stored.dseq <= record.cursor:
        state.update(status="delivered", delivered_at=rfc3339(record.delivered_at))
    elif record.retry is not None:
        attempts, next_try, error = record.retry
        state.update(status="retrying", attempts=attempts, next_try=rfc3339(next_try), last_error=error)
    if record.paused and state["status"] in ("pending", "retrying"):
        state["status"] = "paused"
    return state


def dead(sink: str, event: dict[str, Any], failed_at: float) -> dict[str, Any]:
    return {"sink": sink, "event_id": event.get("id"), "dead_at": rfc3339(failed_at)}


def rejected_bodies(directory: Path, query: str) -> list[tuple[str, str]]:
    """Rejected bodies (verified, unparseable) that mention the ID: file name and reason."""
    if not directory.is_dir() or len(query) < 4:
        return []
    needle = query.encode()
    hits = []
    for body in sorted(directory.glob("*.body")):
        try:
            if needle not in body.read_bytes():
                continue
            note = json.loads(body.with_suffix(".json").read_text())
        except (OSError, ValueError):
            note = {}
        hits.append((body.name, str(note.get("reason", "unknown"))))
    return hits


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render(
    query: str,
    traced: list[dict[str, Any]],
    pruned: list[tuple[str, dict[str, Any], float]],
    rejected: list[tuple[str, str]],
) -> str:
    if not traced and not pruned:
        lines = [f"no event matches {query!r}: the journal has never seen it (or has pruned it)"]
        if rejected:
            lines.append("the rejected store holds bodies that mention it and failed to parse:")
            lines += [f"  rejected/{name}: {reason}" for name, reason in rejected]
        else:
            lines.append("no rejected body (verified but unparseable) mentions it either")
        return "\n".join(lines)
    lines: list[str] = []
    for item in traced:
        event = item["event"]
        lines.append(f"{event.get('id')}  (event_ref {item['event_ref']})")
        lines.append(
            f"  received  {item['received_at']} from source {event.get('source')} ({event.get('provider')}), "
            f"{event.get('kind')} {event.get('type') or event.get('status') or event.get('event')}"
        )
        who = ", ".join(f"{key} {event[key]}" for key in ("from", "to", "chat_id") if event.get(key))
        if who:
            lines.append(f"  contact   {who}")
        if event.get("text"):
            lines.append(f"  text      {event['text'][:200]!r}")
        media = event.get("media")
        if isinstance(media, dict):
            stored = media.get("stored") or {}
            where = stored.get("url") or "/".join(
                str(part) for part in (stored.get("bucket"), stored.get("key"))
            )
            lines.append(f"  media     {'error: ' + str(media['error']) if media.get('error') else where}")
        if item["waiting_for_media"]:
            lines.append("  media     being downloaded: no sink has it yet")
        lines.append("  sinks")
        for name, state in item["sinks"].items():
            lines.append(f"    {name:<16} {describe_sink(state)}")
        lines.append("")
    for sink, event, failed_at in pruned:
        lines.append(
            f"{event.get('id')}: pruned from the journal; dead letter of {sink} since {rfc3339(failed_at)}"
        )
    return "\n".join(lines).rstrip()


def describe_sink(state: dict[str, Any]) -> str:
    status = state["status"]
    if status == "delivered":
        return f"delivered at {state['delivered_at'] or '(before this version kept times)'}"
    if status == "retrying":
        return (
            f"retrying: attempt {state['attempts']}, next try {state['next_try']}, "
            f"last error: {state['last_error']}"
        )
    if status == "dead":
        return f"dead-lettered {state['dead_at']} after {state['attempts']} attempts: {state['last_error']}"
    if status == "filtered":
        return "filtered out (kinds/types/sources of this sink)"
    if status == "paused":
        return "paused: waits in the journal until `wahookd resume`"
    return "pending: waiting its turn"
