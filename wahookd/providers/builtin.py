"""The built-in providers, registered as an ordinary plugin (see `wahookd.plugins`)."""

from __future__ import annotations

from wahookd.hookspecs import hookimpl
from wahookd.providers import Provider
from wahookd.providers.evolution import EvolutionProvider
from wahookd.providers.meta import MetaProvider
from wahookd.providers.standard import StandardProvider
from wahookd.providers.twilio import TwilioProvider
from wahookd.providers.waha import WahaProvider
from wahookd.providers.wasender import WasenderProvider


@hookimpl
def wahookd_register_providers() -> list[Provider]:
    return [
        WasenderProvider(),
        MetaProvider(),
        TwilioProvider(),
        WahaProvider(),
        EvolutionProvider(),
        StandardProvider(),
    ]
