"""Media: keep every attachment before the provider's link expires (issue 4).

- `stage`: `MediaStage`, between the journal and the sinks; retries, ``media.error``. It
  asks the event's provider (`Provider.fetch_media`, `Provider.media_hosts`) for the file,
  so a provider added by a plugin gets media like a built-in one.
- `retrieval`: the steps providers share (plain download, API lookup, WhatsApp-encrypted
  download, inline base64), as functions a provider's `fetch_media` calls.
- `decrypt`: WhatsApp media decryption (HKDF-SHA256 -> AES-256-CBC, 10-byte MAC).
- `fetch`: streaming HTTP downloads, redirects followed hop by hop.
- `guard`: the SSRF guard (allowed hosts, public addresses only).
- `store`: the local directory and S3/MinIO stores, object keys.
- `errors`: `MediaError` and friends, each with a short, secret-free reason.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MediaStage"]


def __getattr__(name: str) -> Any:
    # Lazily: providers import `wahookd.media.retrieval`, and the stage imports the plugin
    # registry (which imports the providers), so importing the stage here would be a cycle.
    if name == "MediaStage":
        from wahookd.media.stage import MediaStage

        return MediaStage
    raise AttributeError(name)
