"""wahookd: a self-hosted daemon that receives WhatsApp webhooks.

Module map (the plugin API is `hookspecs`, `errors`, `events`, `providers` and `testing`):

- `cli`        the command line; the only place that exits
- `admin`      `wahookd status` and `wahookd plugins`; `replay` re-delivers to a sink;
               `sendtest` posts signed sample webhooks
- `settings`   configuration (TOML + environment + *_file secrets)
- `app`        `make_app(...)`: routes `/webhooks/...` to `intake` (a lean Tornado message
               delegate: verify, parse, commit, answer) and the rest to `handlers`
- `daemon`     `serve(settings)`: startup, signals, drain and shutdown
- `providers/` one module per WhatsApp API provider: verify, split, normalize
- `events`     the normalized event (SPEC §4) and shared conversions
- `ratelimit`  per-client-IP token buckets
- `rejected`   keeps verified bodies that could not be parsed
- `journal`    the durable store: events, dedupe LRU, sink positions, dead letters
- `delivery`   one worker per sink: retries, backoff, dead letters
- `media`      downloads attachments into the object store before delivery
- `hookspecs`  the plugin hooks and the `SinkSpec` descriptor
- `plugins`    the plugin manager factory and registry
- `sinks/`     the built-in sinks (file, forward, sql), written as plugins
- `metrics`    Prometheus metrics, defined against an injected registry
- `log`        structlog configuration
- `lifecycle`  `SinkHandle`: one sink's start/deliver/flush/close behind one guarded call
- `trace`, `privacy`, `fsck`  `wahookd trace`, `forget`, `fsck`
- `statelock`  one daemon per state directory
- `testing`    helpers for plugin authors; `conformance` the sink conformance suite
- `newsink`    `wahookd new-sink`: a plugin distribution to start from
"""

from wahookd.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
