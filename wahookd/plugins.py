"""The plugin manager: built-in plugins from one explicit tuple, third parties by entry point."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import cast

import pluggy

from wahookd import hookspecs
from wahookd.errors import PluginError
from wahookd.hookspecs import SinkSpec
from wahookd.providers import Provider

# Built-in sinks and providers are ordinary plugin modules, registered exactly as a
# third-party plugin would be.
BUILTIN_PLUGINS = (
    "wahookd.providers.builtin",
    "wahookd.sinks.file",
    "wahookd.sinks.forward",
    "wahookd.sinks.sql",
)


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("wahookd")
    manager.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a built-in not written yet in this checkout
                continue
            raise
        manager.register(module, name=name)
    if load_entrypoints:
        try:
            manager.load_setuptools_entrypoints("wahookd")
        except Exception as exc:  # a broken third-party plugin must name itself
            raise PluginError(f"cannot load a plugin from entry-point group 'wahookd': {exc}") from exc
    try:
        # A hook implementation whose name matches no spec (`wahookd_register_sink`, a typo)
        # would otherwise never be called, silently.
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) if exc.plugin is not None else "?"
        raise PluginError(f"plugin {name!r}: {exc}") from None
    return manager


@dataclass(frozen=True, slots=True)
class Registry:
    """What the plugins provide, by name."""

    sinks: dict[str, SinkSpec]
    providers: dict[str, Provider]
    sink_owners: dict[str, str]
    provider_owners: dict[str, str]


def collect(manager: pluggy.PluginManager) -> Registry:
    """Ask every plugin for its sinks and providers; a name claimed twice is an error."""
    sinks: dict[str, SinkSpec] = {}
    sink_owners: dict[str, str] = {}
    for impl in manager.hook.wahookd_register_sinks.get_hookimpls():
        owner = manager.get_name(impl.plugin) or impl.plugin_name
        specs = cast(list[SinkSpec], impl.function() or [])
        for spec in specs:
            if spec.name in sinks:
                raise PluginError(
                    f"sink {spec.name!r} is provided by both {sink_owners[spec.name]} and {owner}"
                )
            sinks[spec.name] = spec
            sink_owners[spec.name] = owner
    providers: dict[str, Provider] = {}
    provider_owners: dict[str, str] = {}
    for impl in manager.hook.wahookd_register_providers.get_hookimpls():
        owner = manager.get_name(impl.plugin) or impl.plugin_name
        found = cast(list[Provider], impl.function() or [])
        for provider in found:
            if provider.name in providers:
                raise PluginError(
                    f"provider {provider.name!r} is provided by both "
                    f"{provider_owners[provider.name]} and {owner}"
                )
            providers[provider.name] = provider
            provider_owners[provider.name] = owner
    return Registry(sinks, providers, sink_owners, provider_owners)
