"""The `sql` sink: events and outbound message statuses in SQLite or PostgreSQL (SQLAlchemy Core).

Tables (names get the optional ``table_prefix``):

- ``events``: one row per event, primary key ``id``; the SPEC §4 fields as columns
  (``"from"`` and ``"to"`` keep their names, so quote them in SQL), ``media``, ``error`` and
  ``raw`` as JSON text, ``timestamp``/``received_at`` as UTC timestamps, and ``fields``: every
  field but ``raw`` as JSON text, those without a column included. Written with an
  upsert on ``id`` (``INSERT ... ON CONFLICT (id) DO UPDATE``), so a redelivery after a crash
  or a ``wahookd replay`` leaves one row: exactly once in effect.
- Every string column is unbounded text, so any event the intake accepted is stored. The JSON
  columns keep the event exactly: numbers as the provider wrote them, and NUL as the JSON
  escape ``\\u0000``. PostgreSQL text cannot hold NUL, so there (only) a NUL in a plain
  column such as ``text`` is stored as U+FFFD; ``fields`` and ``raw`` still have it. JSON
  columns are text rather than ``jsonb`` for the same reason (``jsonb`` refuses ``\\u0000``)
  and because ``jsonb`` rewrites numbers (``1e400`` as a 1 and 400 zeros).
- ``message_status``: the latest status of each outbound message, keyed by
  (``source``, ``message_id``), with one ``<status>_at`` column per step. Statuses only move
  forward (pending < sent < delivered < read < played) and ``failed`` is terminal, so a late
  ``delivered`` never overwrites ``read``; it still fills ``delivered_at``. The rule lives in
  one ``ON CONFLICT DO UPDATE ... CASE`` statement, which keeps it atomic when several
  deliveries run at once.
- ``wahookd_schema``: one row (``component = 'sql_sink'``) with the schema version. Version 2
  made the VARCHAR(255) columns of version 1 text and added ``fields``.

Migration plan: `SCHEMA_VERSION` is bumped with every schema change, and `MIGRATIONS[n]`
holds the function that moves a database from version n to n + 1. On start the sink creates
missing tables, reads the version row and applies the pending steps in order, each in its own
transaction together with the version update, so an interrupted upgrade resumes where it
stopped. Steps are additive (new nullable columns, new tables, new indexes) so an older wahookd
keeps working against a newer schema within one major version; a database whose version is
newer than this wahookd knows is refused at start instead of being written wrongly.

The default URL is ``sqlite:///<state.dir>/events.db``; a relative SQLite path is taken
relative to the state directory. ``postgresql://`` (and ``postgres://``) URLs use psycopg 3.
Database calls run on worker threads (one for SQLite, whose writers serialise anyway;
``pool_size`` for PostgreSQL), never on the event loop.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from wahookd.hookspecs import SinkContext, SinkSpec, hookimpl
from wahookd.settings import resolve_secret_files

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,30}$")


class SqlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr | None = Field(None, description="SQLAlchemy URL; default sqlite:///<state.dir>/events.db")
    table_prefix: str = Field("", description="prefix for the table names, e.g. wahookd_")
    pool_size: int = Field(4, ge=1, le=64, description="PostgreSQL connections (and threads)")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        # The URL may carry a password, so it may come from a file like any secret.
        return resolve_secret_files(data, ("url",))

    @field_validator("table_prefix")
    @classmethod
    def _identifier_prefix(cls, prefix: str) -> str:
        if prefix and not IDENTIFIER.match(prefix):
            raise ValueError("letters, digits and _ only, not starting with a digit")
        return prefix


def make_sql_sink(options: SqlOptions, context: SinkContext) -> Any:
    from wahookd.sinks.sqlstore import SqlSink  # SQLAlchemy only when a sql sink is configured

    return SqlSink(options, context)


@hookimpl
def wahookd_register_sinks() -> list[SinkSpec]:
    return [
        SinkSpec(
            "sql",
            SqlOptions,
            make_sql_sink,
            "store events and monotonic message statuses in SQLite or PostgreSQL",
        )
    ]
