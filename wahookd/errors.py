"""The errors wahookd raises on purpose.

`cli.main()` turns a `WahookdError` into one line, ``wahookd: error: ...``, and exit 1.
Anything else is a bug and keeps its traceback.
"""

from typing import Any


class WahookdError(Exception):
    """An operator-facing error: its message is the whole explanation."""


class ConfigError(WahookdError):
    """The configuration is invalid; `problems` holds one line per problem."""

    def __init__(
        self,
        problems: list[str],
        data: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.problems = problems
        self.data = data  # the parsed table, when the file parsed but did not validate
        self.context = context or {}  # its validation context (the config file's directory)
        super().__init__("; ".join(problems))


class PluginError(WahookdError):
    """A plugin is broken or two plugins claim the same name."""


class ParseError(ValueError):
    """A verified request body that cannot be turned into events (HTTP 400)."""


class JournalError(WahookdError):
    """An event could not be made durable (HTTP 503)."""


class DeliveryError(Exception):
    """Raised by a sink: retry later, after `retry_after` seconds if the target said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(Exception):
    """Raised by a sink when retrying cannot help (e.g. HTTP 410): dead-letter at once."""
