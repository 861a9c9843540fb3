"""Configuration: one TOML file, every key overridable from the environment (SPEC §5).

Precedence: `WAHOOKD_*` environment variables (``__`` nests: ``WAHOOKD_SERVER__LISTEN``)
over the TOML file over the defaults below. A list setting from the environment is JSON
(``["10.0.0.0/8"]``) or comma-separated (``10.0.0.0/8,192.168.0.0/16``). Any secret may be
given as ``<key>_file``; relative paths resolve against ``$CREDENTIALS_DIRECTORY`` (systemd
``LoadCredential=``), else against the config file's directory — one rule, in
`resolve_file`, with the config file's directory passed through pydantic's validation
context. An empty or whitespace-only secret is an error, never a key: an HMAC with an empty
key is forgeable by anyone. Unknown keys are errors naming their full path.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import tomllib
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import EnvSettingsSource

from wahookd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/wahookd/wahookd.toml")
ENV_PREFIX = "WAHOOKD_"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _network(value: Any) -> Any:
    """An address or CIDR; host bits are allowed (10.0.0.1/8 means 10.0.0.0/8)."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    try:
        return ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None


Network = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]


def _not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty: an empty secret signs nothing, anyone could forge it")
    return value


# Every secret of every table: SecretStr (never printed) that refuses to be empty.
Secret = Annotated[SecretStr, AfterValidator(_not_blank)]


# -- `_file` keys ---------------------------------------------------------------------


# What a secret file that could not be read becomes for `load_settings(read_secrets=False)`.
UNREAD_SECRET = "(secret file not read)"  # noqa: S105 - a placeholder, not a credential


def _context(info: ValidationInfo | None) -> dict[str, Any]:
    return info.context if info is not None and isinstance(info.context, dict) else {}


def resolve_file(path_text: str | os.PathLike[str], info: ValidationInfo | None = None) -> Path:
    """Where a relative `*_file` path points: `$CREDENTIALS_DIRECTORY` when systemd set one
    (`LoadCredential=`), else the config file's directory, else the working directory."""
    path = Path(path_text).expanduser()
    if path.is_absolute():
        return path
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    if base:
        return Path(base) / path
    return Path(_context(info).get("config_dir") or Path.cwd()) / path


def read_secret_file(path_text: str | os.PathLike[str], info: ValidationInfo | None = None) -> str:
    """The secret in a file, surrounding whitespace stripped; `ValueError` if unreadable or empty."""
    path = resolve_file(path_text, info)
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{path} is empty: an empty secret signs nothing, anyone could forge it")
    return text


def resolve_secret_files(data: Any, secret_keys: tuple[str, ...], info: ValidationInfo | None = None) -> Any:
    """Replace each ``<key>_file`` in a raw table by ``<key>`` read from that file.

    For a model validator in ``mode="before"``; pass its `ValidationInfo` so relative paths
    resolve against the config file's directory. Errors name the ``_file`` key itself."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    errors: list[InitErrorDetails] = []
    for key in secret_keys:
        file_key = f"{key}_file"
        if file_key not in data:
            continue
        value = data.pop(file_key)
        try:
            if data.get(key) is not None:
                raise ValueError(f"give {key} or {file_key}, not both")
            data[key] = read_secret_file(str(value), info)
        except ValueError as exc:
            if not _context(info).get("read_secrets", True):
                data[key] = UNREAD_SECRET  # a command that never uses secrets (status)
                continue
            error = PydanticCustomError("secret_file", "{problem}", {"problem": str(exc)})
            errors.append(InitErrorDetails(type=error, loc=(file_key,), input=value))
    if errors:
        raise ValidationError.from_exception_data("secret files", errors)
    return data


def read_list_file(data: Any, key: str, info: ValidationInfo | None) -> Any:
    """``<key>_file`` for a list of secrets: one per line (blank lines and # comments skipped)."""
    if not isinstance(data, dict) or f"{key}_file" not in data:
        return data
    data = resolve_secret_files(data, (key,), info)
    lines = [line.strip() for line in data.pop(key).splitlines()]
    data[key] = [line for line in lines if line and not line.startswith("#")]
    return data


class ListFromEnvironment(EnvSettingsSource):
    """pydantic-settings reads complex values from the environment as JSON only, so
    ``WAHOOKD_SERVER__TRUSTED_PROXIES=10.0.0.0/8`` was a traceback; a list that is not JSON
    is taken as comma-separated."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if field is None:  # a plugin's own key (sinks.<name>.path): its model decides
                return value
            origin = getattr(field.annotation, "__origin__", None)
            if origin is list and isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            raise ValueError(f"{field_name}: expected JSON, got {value!r}") from None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def split_host_port(text: str) -> tuple[str, int]:
    """`host:port` as the listeners bind it; the host is an IP address, a host name, or empty
    (all addresses). Raises `ValueError` naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port with a port from 1 to 65535, got {text!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if bracketed or not HOSTNAME.match(host):
                raise ValueError(f"{host!r} is not an IP address or host name (in {text!r})") from None
    return host or "0.0.0.0", int(port)  # noqa: S104 - explicit ":8080" means all


class ServerSettings(Section):
    listen: str = Field("127.0.0.1:8080", description="host:port the HTTP server binds")
    metrics_listen: str | None = Field(
        None, description="host:port for a separate /metrics listener; unset serves it on listen"
    )
    max_body_bytes: int = Field(3 * 1024 * 1024, gt=0, description="largest accepted body (413)")
    trusted_proxies: list[Network] = Field(
        default_factory=lambda: [ip_network("127.0.0.1/32"), ip_network("::1/128")],
        description="peers whose X-Forwarded-For/-Proto/-Host headers are believed",
    )
    body_timeout: float = Field(30.0, gt=0, description="seconds a client may take to send a body")
    idle_timeout: float = Field(
        60.0, gt=0, description="seconds a connection may wait for a request's headers before it is closed"
    )
    drain_seconds: float = Field(
        15.0, ge=0, description="on SIGTERM, how long in-flight requests and sinks may finish"
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) file: HTTPS on listen; re-read on reload"
    )
    tls_key: Path | None = Field(None, description="PEM private key file for tls_cert")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error; changes on reload"
    )
    access_log: bool = Field(True, description="one log line per webhook request")

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_file(value, info)

    @model_validator(mode="after")
    def _two_listeners(self) -> ServerSettings:
        if self.metrics_listen is not None and self.metrics_listen == self.listen:
            raise ValueError("metrics_listen must differ from listen (unset it to serve /metrics there)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both for HTTPS, or neither")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class StateSettings(Section):
    dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("STATE_DIRECTORY") or "wahookd-data"),
        description="journal, dedupe index and dead letters ($STATE_DIRECTORY under systemd)",
    )
    durability: Literal["fsync", "os"] = Field(
        "fsync", description='"fsync": a 200 survives power loss; "os": faster, not crash-safe'
    )

    @field_validator("dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Sinks and the media store resolve their paths against it; pin it to one place.
        return value.expanduser().absolute()

    retention_days: float = Field(
        7.0, ge=0, description="keep delivered events this long for `wahookd replay`"
    )

    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description='"sqlite": the journal in state.dir; "postgres": in the database at state.url, '
        "shared by several nodes",
    )
    url: Secret | None = Field(
        None, description="PostgreSQL DSN for backend = postgres (postgresql://...); or url_file"
    )
    lease_seconds: float = Field(
        15.0,
        gt=0,
        description="with backend = postgres: a node that dies hands its sinks and media stage "
        "to another within this long",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret_files(data, ("url",), info)

    @model_validator(mode="after")
    def _postgres_needs_url(self) -> StateSettings:
        if self.backend == "postgres" and self.url is None:
            raise ValueError('backend = "postgres" needs url (or url_file)')
        url = None if self.url is None else self.url.get_secret_value()
        if url not in (None, UNREAD_SECRET) and not str(url).startswith(("postgres://", "postgresql://")):
            raise ValueError("url must be a postgresql:// DSN")
        return self

    @property
    def fsync(self) -> bool:
        return self.durability == "fsync"

    @property
    def shared(self) -> bool:
        """Several nodes share this state (the journal is in PostgreSQL)."""
        return self.backend == "postgres"


REDIS_SCHEMES = ("redis", "rediss", "unix")


class RateLimitSettings(Section):
    rate: float = Field(50.0, gt=0, description="requests per second per client IP")
    burst: int = Field(100, gt=0, description="bucket size: requests allowed at once")
    max_clients: int = Field(
        100_000, gt=0, description="client IPs tracked at once; least recently seen are dropped"
    )
    backend: Literal["memory", "redis"] = Field(
        "memory", description='"memory": each node its own buckets; "redis": buckets shared by every node'
    )
    url: Secret | None = Field(
        None, description="Redis URL for backend = redis (redis://, rediss://, unix://); or url_file"
    )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret_files(data, ("url",), info)

    @model_validator(mode="after")
    def _redis_url(self) -> RateLimitSettings:
        if self.backend != "redis":
            return self
        if self.url is None:
            raise ValueError('backend = "redis" needs url (or url_file): the Redis every node shares')
        url = self.url.get_secret_value()
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if url != UNREAD_SECRET and scheme not in REDIS_SCHEMES:
            # The URL may hold a password: name its scheme only, never the URL.
            given = f"{scheme}://" if scheme else "a URL without a scheme"
            raise ValueError(f"url must start with redis://, rediss:// or unix://, not {given}")
        if importlib.util.find_spec("redis") is None:
            raise ValueError("backend = \"redis\" needs the redis package: pip install 'wahookd[redis]'")
        return self

    @property
    def redis_url(self) -> str | None:
        """The Redis to share buckets through, or None for node-local buckets."""
        if self.backend != "redis" or self.url is None:
            return None
        return self.url.get_secret_value()


class DedupeSettings(Section):
    capacity: int = Field(1_000_000, gt=0, description="entries kept in the on-disk LRU")


SOURCE_SECRETS = ("secret", "verify_token", "access_token", "api_key")


class SourceSettings(Section):
    provider: str = Field(description="wasender, meta, twilio, waha, evolution, standard, ...")
    secret: Secret | None = Field(None, description="the provider's signing secret")
    secrets: list[Secret] = Field(
        default_factory=list,
        description="more secrets, all accepted (rotation); secrets_file: one per line",
    )
    verify: Literal["signature", "none"] = Field(
        "signature", description='"none" accepts unsigned requests; logged loudly at start'
    )
    verify_token: Secret | None = Field(None, description="Meta's GET handshake token")
    public_url: str | None = Field(
        None, description="the URL the provider signs (Twilio), when a proxy rewrites it"
    )
    allow_ips: list[Network] = Field(
        default_factory=list, description="optional CIDR allow-list; empty allows any address"
    )
    token_header: str = Field("apikey", description="Evolution: the header carrying the shared token")
    access_token: Secret | None = Field(None, description="bearer token for fetching media")
    api_key: Secret | None = Field(None, description="API key for fetching media")
    api_url: str | None = Field(
        None,
        description="provider API base URL for media lookups; default the provider's public API",
    )
    stale_after: float | None = Field(
        None, gt=0, description="seconds without an event after which wahookd_source_stale is 1"
    )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret_files(read_list_file(data, "secrets", info), SOURCE_SECRETS, info)

    def secret_values(self) -> list[bytes]:
        """Every accepted secret, the current one first."""
        values = [self.secret] if self.secret is not None else []
        values.extend(self.secrets)
        return [value.get_secret_value().encode() for value in values]


class MediaSettings(Section):
    store: Literal["local", "s3"] = Field("local", description='"local" directory or "s3"')
    dir: Path | None = Field(None, description="local store directory; default state.dir/media")
    endpoint: str = Field("127.0.0.1:9000", description="S3/MinIO host:port")
    bucket: str = Field("whatsapp-media", description="bucket, created if missing")
    region: str | None = Field(None, description="S3 region, if the server needs one")
    access_key: Secret | None = Field(None, description="S3 access key")
    secret_key: Secret | None = Field(None, description="S3 secret key")
    secure: bool = Field(True, description="TLS to the object store")
    allow_hosts: list[str] = Field(
        default_factory=list, description="extra media hosts beyond each provider's own"
    )
    max_bytes: int = Field(100 * 1024 * 1024, gt=0, description="largest media file kept")
    timeout: float = Field(30.0, gt=0, description="seconds for one download")
    max_attempts: int = Field(6, ge=1, description="download tries before media.error")
    backoff_initial: float = Field(2.0, gt=0, description="first retry delay, doubled each try")
    concurrency: int = Field(4, ge=1, le=64, description="media downloads in flight at once")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret_files(data, ("access_key", "secret_key"), info)


# `redact`: fields replaced by null, and contact fields replaced by a keyed hash.
REDACT_NULL = ("text", "raw", "media", "sender_name")
REDACT_HASH = ("from", "to", "chat_id", "from_lid", "from_user_id")
REDACTABLE = Literal[
    "text", "raw", "media", "sender_name", "from", "to", "chat_id", "from_lid", "from_user_id"
]


class SinkSettings(BaseModel):
    """The keys every sink table has; the rest of the table belongs to the sink's plugin."""

    model_config = ConfigDict(extra="allow", frozen=True)

    plugin: str = Field(description="which sink plugin: file, forward, sql, or a third party's")
    kinds: list[Literal["message", "status", "call", "system"]] | None = Field(
        None, description="deliver only these kinds; unset delivers all"
    )
    types: list[str] | None = Field(None, description="deliver only these message types")
    sources: list[str] | None = Field(None, description="deliver only events of these sources")
    events: list[str] | None = Field(
        None, description="deliver only these provider event names (messages.upsert, ...)"
    )
    concurrency: int = Field(1, ge=1, le=256, description="deliveries in flight at once")
    ordering: Literal["none", "chat"] = Field(
        "none", description='"chat": one event per chat_id at a time, in journal order'
    )
    rate: float | None = Field(None, gt=0, description="most deliveries per second, evenly spaced")
    pause_after: int = Field(
        0, ge=0, description="consecutive failed attempts that pause the sink (circuit); 0 never"
    )
    redact: list[REDACTABLE] = Field(
        default_factory=list, description="fields this sink never sees (text, raw, from, ...)"
    )
    # 25 tries with the default backoff is about 1.5 hours: a target that is down for a
    # while loses nothing to the dead letters, a poison event still ends there.
    max_attempts: int = Field(25, ge=1, description="tries before an event is dead-lettered")
    max_age: float = Field(86400.0, gt=0, description="seconds after which a failing event is dead-lettered")
    backoff_initial: float = Field(1.0, gt=0, description="first retry delay in seconds")
    backoff_max: float = Field(300.0, gt=0, description="longest retry delay in seconds")

    def plugin_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def matches(self, event: dict[str, Any]) -> bool:
        return (
            (self.kinds is None or event.get("kind") in self.kinds)
            and (self.types is None or event.get("type") in self.types)
            and (self.sources is None or event.get("source") in self.sources)
            and (self.events is None or event.get("event") in self.events)
        )


class Settings(BaseModel):
    """The whole configuration. `load_settings` builds it from the file and the environment;
    `Settings()` is the embedded defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    dedupe: DedupeSettings = Field(default_factory=DedupeSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    sinks: dict[str, SinkSettings] = Field(default_factory=dict)
    # The directory relative `_file` paths resolve against (after $CREDENTIALS_DIRECTORY).
    _config_dir: Path | None = PrivateAttr(None)

    @property
    def validation_context(self) -> dict[str, Any]:
        """What a plugin's option model is validated with (see `resolve_file`)."""
        return {"config_dir": self._config_dir}

    @property
    def media_dir(self) -> Path:
        return self.media.dir or self.state.dir / "media"

    def effective_sinks(self) -> dict[str, SinkSettings]:
        """The configured sinks, or the embedded default: one JSONL file in the state dir."""
        if self.sinks:
            return self.sinks
        default = SinkSettings(plugin="file", path=str(self.state.dir / "events.jsonl"))
        return {"events": default}


def config_path(explicit: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """The config file to read, and whether it was asked for (a missing default is fine)."""
    if explicit:
        return Path(explicit), True
    if os.environ.get("WAHOOKD_CONFIG"):
        return Path(os.environ["WAHOOKD_CONFIG"]), True
    return DEFAULT_CONFIG_PATH, False


def read_config_file(explicit: str | os.PathLike[str] | None) -> tuple[dict[str, Any], Path | None]:
    """The TOML table of the config file (empty when the default file is absent)."""
    path, required = config_path(explicit)
    if not path.exists():
        if required:
            raise ConfigError([f"{path}: no such file"])
        return {}, None
    try:
        return tomllib.loads(path.read_text()), path
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override`'s values in it, tables merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def environment_table() -> dict[str, Any]:
    """The `WAHOOKD_*` variables as a nested table; a malformed value is a config error."""
    try:
        source = ListFromEnvironment(
            Settings,  # type: ignore[arg-type]  # only its fields are read
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
        )
        return source()
    except Exception as exc:  # pydantic-settings wraps a bad value in SettingsError
        raise ConfigError([f"environment: {exc.__cause__ or exc}"]) from None


def load_settings(
    explicit: str | os.PathLike[str] | None = None, *, read_secrets: bool = True
) -> tuple[Settings, Path | None]:
    """Read and validate the configuration; `ConfigError` lists every problem.

    `read_secrets=False` is for commands that only read the state (`status`): a secret file
    they cannot read (it exists for the service under `LoadCredential=`, or only root may
    read it) is not their problem. `ConfigError.data` carries the merged table, so the
    caller can still check its parts."""
    data, used = read_config_file(explicit)
    data = deep_update(data, environment_table())
    config_dir = used.resolve().parent if used else None
    context = {"config_dir": config_dir, "read_secrets": read_secrets}
    try:
        settings = Settings.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc), data, context) from None
    settings._config_dir = config_dir
    return settings, used


def describe_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[str]:
    """One line per problem, naming the key's full path: `sinks.archive.path: field required`."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in (*prefix, *error["loc"])]
        # Pydantic reports tagged-union/validator internals as extra loc parts; drop them.
        loc = [part for part in loc if not part.startswith("function-")]
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "field required"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        lines.append(f"{'.'.join(loc) or '(top)'}: {message}")
    return lines
