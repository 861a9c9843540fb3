"""`wahookd forget CONTACT`: erase one person's events everywhere wahookd keeps them (SPEC §7).

What goes: the journal's events whose `from`, `to`, `chat_id`, `from_lid` or `from_user_id`
names the contact (its phone digits, its `@s.whatsapp.net`/`@c.us` JIDs, or its LID), their
dead letters and `retries` rows, the rejected bodies that mention it, and the media files
those events stored (the local store's files, S3 objects), except an object another
person's event points at too (keys are content hashes). What stays: the dedupe keys, so a
provider retry of a forgotten webhook is still a duplicate and creates nothing.

Then one `{kind: "system", event: "privacy.forget", from: CONTACT}` event is journaled
and every sink receives it like any other, so that downstream stores can erase too (the
built-in `sql` sink deletes that contact's rows).

Safe while the daemon runs. The order makes a failure harmless to run again:

1. read the contact's rows (a plain read: the daemon goes on committing);
2. wait, within `--wait`, for those of its events still fetching their media (a file the
   media stage stored after this run would be left behind);
3. delete their media objects: if the store fails, nothing else has changed yet, and the
   command can simply be run again;
4. one short write transaction deletes the rows (and those that arrived since step 1) and
   journals the `privacy.forget` event without a delivery position, as an event waiting
   for media is: the running daemon's media stage numbers it within seconds (this process
   must not, the daemon numbers events from memory), or the daemon does at its next start;
5. media that events of step 4's rescan stored, and the rejected bodies.

The daemon may still hold an event it had read just before (a sink retrying it, or a
batch in flight): it reaches that sink before the `privacy.forget` event does.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from wahookd.admin import open_journal
from wahookd.errors import WahookdError
from wahookd.events import Event, now_rfc3339
from wahookd.journal import FORGET_EVENT, ContactRows, JournalMaintenance
from wahookd.log import configure_logging
from wahookd.media.errors import MediaError
from wahookd.media.store import LocalStore, MediaStore, make_store
from wahookd.rejected import RejectedStore
from wahookd.settings import Settings, load_settings
from wahookd.statelock import holder_pid

MIN_DIGITS = 5  # fewer is no phone number: a typo must not match a short code's events
WAIT_POLL_SECONDS = 0.2
LID = re.compile(r"[0-9A-Za-z._:-]+@lid")


def normalize_contact(text: str) -> str:
    """Phone digits (`+`, spaces, dashes, dots, brackets, `whatsapp:` and a JID suffix
    allowed around them) or a `…@lid` address, as the events hold it."""
    value = text.strip()
    if LID.fullmatch(value):
        return value
    bare = re.sub(r"[\s().\-]", "", value)
    if bare.startswith("whatsapp:"):
        bare = bare[len("whatsapp:") :]
    for suffix in ("@s.whatsapp.net", "@c.us"):
        if bare.endswith(suffix):
            bare = bare[: -len(suffix)].split(":", 1)[0]
    bare = bare.removeprefix("+")
    if not bare.isdigit() or len(bare) < MIN_DIGITS:
        raise WahookdError(
            f"forget: {text!r} is neither a phone number (digits; + and spaces allowed) nor a …@lid address"
        )
    return bare


def contact_addresses(contact: str) -> tuple[str, ...]:
    """Every spelling the events' contact fields give this contact: `from`/`to` hold phone
    digits, a `chat_id` the JID."""
    if contact.endswith("@lid"):
        return (contact,)
    return (contact, f"{contact}@s.whatsapp.net", f"{contact}@c.us")


def forget_event(contact: str) -> dict[str, Any]:
    """The `privacy.forget` system event: every field of SPEC §4, `from` the contact."""
    now = now_rfc3339()
    event = Event(
        id=f"wahookd:forget:{uuid.uuid4().hex}",
        source="wahookd",
        provider="wahookd",
        kind="system",
        event=FORGET_EVENT,
        # What a sink needs to erase too: every spelling of the contact its events use.
        raw={"contact": contact, "addresses": list(contact_addresses(contact))},
        sender=contact,
        timestamp=now,
        received_at=now,
    )
    return event.to_dict()


def waiting_for_media(event: dict[str, Any], dseq: int | None) -> bool:
    media = event.get("media")
    return dseq is None and isinstance(media, dict) and not media.get("stored") and not media.get("error")


def stored_objects(events: list[dict[str, Any]]) -> set[tuple[str | None, str]]:
    """(bucket, key) of every stored media object the events point at."""
    found = set()
    for event in events:
        media = event.get("media")
        stored = media.get("stored") if isinstance(media, dict) else None
        if isinstance(stored, dict) and isinstance(stored.get("key"), str) and stored["key"]:
            bucket = stored.get("bucket")
            found.add((bucket if isinstance(bucket, str) and bucket else None, stored["key"]))
    return found


@dataclass(slots=True)
class ForgetReport:
    contact: str
    events: int = 0
    dead_letters: int = 0
    retries: int = 0
    media_deleted: int = 0
    media_missing: int = 0  # pointed at, but already gone
    media_shared: int = 0  # kept: another contact's event points at it too
    rejected: int = 0
    still_fetching: int = 0  # events whose media the daemon was still fetching at the end of --wait
    event_id: str = ""
    daemon_running: bool = False

    def lines(self) -> list[str]:
        media = f"{self.media_deleted} deleted"
        if self.media_missing:
            media += f", {self.media_missing} already gone"
        if self.media_shared:
            media += f", {self.media_shared} kept (other contacts' events use them too)"
        out = [
            f"forgot {self.contact}:",
            f"  journal events   {self.events}",
            f"  dead letters     {self.dead_letters}",
            f"  retry records    {self.retries}",
            f"  media objects    {media}",
            f"  rejected bodies  {self.rejected}",
            "  dedupe keys      kept (a provider's retry of these webhooks creates nothing)",
        ]
        when = (
            "the running daemon delivers it to every sink within seconds"
            if self.daemon_running
            else "the daemon delivers it to every sink when it next starts"
        )
        out.append(f"journaled {FORGET_EVENT} ({self.event_id}): {when}")
        if self.still_fetching:
            out.append(
                f"warning: {self.still_fetching} of its events were still fetching media after --wait; "
                "a file stored for them after this is not erased: run forget again later"
            )
        return out


class MediaEraser:
    """Deletes stored objects from the store each one lives in."""

    def __init__(self, settings: Settings) -> None:
        self.local = LocalStore(settings.media_dir, fsync=False)
        self.s3: MediaStore | None = make_store(settings) if settings.media.store == "s3" else None

    async def delete(self, objects: set[tuple[str | None, str]], report: ForgetReport) -> None:
        try:
            for bucket, key in sorted(objects, key=lambda item: (item[0] or "", item[1])):
                if bucket is None:
                    store = self.local
                elif self.s3 is None:
                    raise WahookdError(
                        f"forget: media in bucket {bucket!r} but media.store is not s3: "
                        "configure the store it was written to"
                    )
                else:
                    store = self.s3
                try:
                    deleted = await store.delete(key, bucket)
                except (MediaError, OSError, ValueError) as exc:
                    raise WahookdError(f"forget: cannot delete media {key}: {exc}") from None
                if deleted:
                    report.media_deleted += 1
                else:
                    report.media_missing += 1
        finally:
            if self.s3 is not None:
                await self.s3.close()


def forget(settings: Settings, contact: str, wait: float) -> ForgetReport:
    addresses = contact_addresses(contact)
    report = ForgetReport(contact, daemon_running=holder_pid(settings.state.dir) is not None)
    journal = open_journal(settings.state, write=True)
    try:
        found = journal.contact_rows(addresses)
        found = wait_for_media(journal, addresses, found, wait if report.daemon_running else 0.0, report)
        events = [stored.event for stored in found.events]
        dead = [event for _id, event in found.dead_letters]
        objects = stored_objects(events + dead)
        kept = journal.media_kept_by_others(addresses, objects)
        report.media_shared = len(objects & kept)
        eraser = MediaEraser(settings)
        # Before any row goes: if the store fails, running the command again finds it all.
        asyncio.run(eraser.delete(objects - kept, report))
        event = forget_event(contact)
        erasure = journal.erase_contact(addresses, found, event)
        report.event_id = event["id"]
        report.events = len(erasure.events)
        report.dead_letters = len(erasure.dead_letters)
        report.retries = erasure.retries
        # Events that came meanwhile, or whose media was stored since the first read.
        late = stored_objects(erasure.events + erasure.dead_letters) - objects
        if late:
            late_kept = journal.media_kept_by_others(addresses, late)
            report.media_shared += len(late & late_kept)
            asyncio.run(MediaEraser(settings).delete(late - late_kept, report))
    finally:
        journal.close()
    report.rejected = RejectedStore(settings.state.dir / "rejected").erase_mentioning(contact)
    return report


def wait_for_media(
    journal: JournalMaintenance,
    addresses: tuple[str, ...],
    found: ContactRows,
    wait: float,
    report: ForgetReport,
) -> ContactRows:
    """Let the running daemon finish fetching the contact's media, within `wait` seconds;
    then read the rows again (with `media.stored` filled in)."""
    fetching = {stored.seq for stored in found.events if waiting_for_media(stored.event, stored.dseq)}
    if not fetching:
        return found
    deadline = time.monotonic() + wait
    while fetching and time.monotonic() < deadline:
        time.sleep(WAIT_POLL_SECONDS)
        fetching = journal.waiting_seqs(fetching)
    report.still_fetching = len(fetching)
    return journal.contact_rows(addresses)


def run_forget(args: argparse.Namespace) -> int:
    """`wahookd forget CONTACT [--wait S]`."""
    configure_logging("warning")
    contact = normalize_contact(args.contact)
    settings, _ = load_settings(args.config)
    report = forget(settings, contact, float(args.wait))
    print("\n".join(report.lines()))
    return 0
