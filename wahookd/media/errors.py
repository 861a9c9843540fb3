"""Why a media download did not end in a stored file.

Every error carries a short `reason` that goes into the event's ``media.error`` and the
log: it names hosts and checks, never URLs (they can carry tokens) or credentials.
"""

from __future__ import annotations


class MediaError(Exception):
    """A failed attempt. `retry` says whether another attempt can help."""

    outcome = "failed"  # the `outcome` label of wahookd_media_downloads_total

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class MediaRefused(MediaError):
    """The SSRF guard or the size cap refused the download; retrying cannot help."""

    outcome = "refused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retry=False)


class MediaIntegrityError(MediaError):
    """A hash, the MAC or the padding did not check out: never stored."""

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason, retry=retry)
