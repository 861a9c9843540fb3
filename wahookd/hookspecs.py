"""The plugin API: every hook a wahookd plugin can implement.

A plugin is a module or object with functions named after these specs, decorated with
`wahookd.hookimpl`. Third-party plugins are found through the ``wahookd`` entry-point group::

    [project.entry-points.wahookd]
    redis = "wahookd_redis"

Each docstring below is the reference for its hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy
from pydantic import BaseModel

if TYPE_CHECKING:
    from wahookd.providers import Provider

hookspec = pluggy.HookspecMarker("wahookd")
hookimpl = pluggy.HookimplMarker("wahookd")


@runtime_checkable
class Sink(Protocol):
    """What a sink factory returns.

    ``async deliver(event)`` gets one SPEC §4 event as a dict. Returning means delivered.
    Raising `wahookd.errors.DeliveryError` (optionally with ``retry_after``) or any other
    exception means "retry later"; `wahookd.errors.PermanentDeliveryError` sends the event
    straight to the dead-letter store.

    Optional methods, called when present: ``async start()`` once before the first event,
    ``async flush()`` before wahookd records the sink's position (make what was delivered
    durable here), ``async close()`` at shutdown.
    """

    async def deliver(self, event: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What wahookd tells a sink about where it runs."""

    name: str  # the sink's table name in [sinks.<name>]
    state_dir: Path  # wahookd's state directory; a sink may keep files under it
    durable: bool  # state.durability == "fsync": flush() should fsync
    log: Any  # a structlog logger bound with sink=<name>


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """A sink plugin's descriptor.

    `name` is the ``plugin =`` value in a sink table; `options` the pydantic model that
    validates the table's own keys (use ``extra="forbid"``); `factory(options, context)`
    builds the sink object.
    """

    name: str
    options: type[BaseModel]
    factory: Callable[[Any, SinkContext], Sink]
    description: str = ""


@hookspec
def wahookd_register_sinks() -> list[SinkSpec]:  # type: ignore[empty-body]
    """Return the sinks this plugin provides.

    Called once at startup, and by ``wahookd plugins``. Two plugins returning the same
    sink name is a startup error naming both.

    Example::

        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            channel: str

        class SlackSink:
            def __init__(self, options, context): ...
            async def deliver(self, event): ...

        @hookimpl
        def wahookd_register_sinks():
            return [SinkSpec("slack", Options, SlackSink, "post messages to Slack")]
    """


@hookspec
def wahookd_register_providers() -> list[Provider]:  # type: ignore[empty-body]
    """Return provider objects (subclasses of `wahookd.providers.Provider`, instantiated).

    A provider's `name` is the ``provider =`` value of a source. Called once at startup.
    """
