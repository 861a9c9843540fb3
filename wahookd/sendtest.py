"""`wahookd send-test`: post a correctly signed sample webhook for one source.

The sample comes from the source's provider (`Provider.sample`), with fresh message ids so
that repeated runs are new events, and is signed the way that provider signs
(`Provider.sign`), so developers see their pipeline work without a tunnel. Twilio signs the
public URL, so a source's `public_url`, when set, is what gets signed (the daemon verifies
against it too).
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from urllib.parse import quote

from wahookd.errors import WahookdError
from wahookd.plugins import collect, get_plugin_manager
from wahookd.providers import Provider
from wahookd.settings import Settings, load_settings, split_host_port

TIMEOUT_SECONDS = 15.0


def default_url(settings: Settings, source_name: str) -> str:
    """The local daemon's webhook URL for a source, from `server.listen`."""
    host, port = split_host_port(settings.server.listen)
    if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard bind is reached through loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/webhooks/{quote(source_name, safe='')}"


def find_provider(name: str) -> Provider:
    providers = collect(get_plugin_manager()).providers
    provider = providers.get(name)
    if provider is None:
        raise WahookdError(f"provider {name!r} is not installed (installed: {', '.join(sorted(providers))})")
    return provider


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """POST and return (status, reason, body); HTTP errors are answers, not exceptions."""
    if not url.startswith(("http://", "https://")):
        raise WahookdError(f"--url must be an http:// or https:// URL, got {url!r}")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - the operator's own URL
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310
            return answer.status, answer.reason, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, str(error.reason), error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise WahookdError(f"cannot reach {url}: {reason}") from None


def run_send_test(args: argparse.Namespace) -> int:
    """Post one signed sample; exit 0 on a 2xx answer, else 1."""
    settings, _ = load_settings(args.config)
    source = settings.sources.get(args.source)
    if source is None:
        known = ", ".join(sorted(settings.sources)) or "none configured"
        raise WahookdError(f"unknown source {args.source!r} (sources: {known})")
    provider = find_provider(source.provider)
    url = args.url or default_url(settings, args.source)
    body, content_type = provider.sample(args.kind)
    headers = {"Content-Type": content_type, "User-Agent": "wahookd-send-test"}
    if source.verify != "none":
        if not source.secret_values():
            raise WahookdError(f"source {args.source!r} has no secret to sign with")
        headers |= provider.sign(body, source.public_url or url, source)
    status, reason, answer = post(url, body, headers)
    print(f"{status} {reason}")
    print(answer.decode("utf-8", "replace"))
    return 0 if 200 <= status < 300 else 1
