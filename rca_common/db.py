"""The PostgreSQL schema, versioned and applied by the services themselves.

``migrate`` runs every migration not yet recorded, in order, inside one
transaction under a transaction-level advisory lock: several services starting
at once apply each migration exactly once. Every table lives in the
deployment's own schema (``DB_SCHEMA``), so deployments and test runs sharing a
server never see each other.
"""

from __future__ import annotations

import re

import asyncpg

from rca_common.logging import get_logger

log = get_logger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Each entry: (version, SQL). Never edit an applied entry: append a new one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE leader_epochs (
            epoch       bigserial PRIMARY KEY,
            holder      text        NOT NULL,
            started_at  timestamptz NOT NULL DEFAULT now()
        );
        -- The ordered log: one row per processed event. ``record`` is the JSON of
        -- {"event": ..., "changes": [...]} exactly as published (orjson bytes).
        CREATE TABLE events (
            seq          bigint PRIMARY KEY,
            epoch        bigint           NOT NULL,
            processed_at double precision NOT NULL,
            event_id     text             NOT NULL,
            record       bytea            NOT NULL
        );
        -- One row per barrier(epoch) the persistor committed: the cut-over point
        -- of that epoch in the stream, and the last seq committed before it.
        CREATE TABLE barriers (
            epoch        bigint PRIMARY KEY,
            max_seq      bigint      NOT NULL,
            committed_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE graph_snapshots (
            id             bigserial PRIMARY KEY,
            epoch          bigint      NOT NULL,
            snapshot_seq   bigint      NOT NULL,
            format_version integer     NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now(),
            size_bytes     bigint      NOT NULL,
            raw_size_bytes bigint      NOT NULL,
            hmac           bytea,
            blob           bytea       NOT NULL
        );
        CREATE INDEX graph_snapshots_seq ON graph_snapshots (snapshot_seq DESC);
        """,
    ),
    (
        2,
        """
        -- The seq after which a leader's evaluators ran live: records of that epoch
        -- up to it were covered by its enabling pass, records after it were evaluated
        -- as they were processed. A new leader re-evaluates only the rest.
        ALTER TABLE leader_epochs ADD COLUMN evaluators_enabled_seq bigint;
        """,
    ),
    (
        3,
        """
        -- Set by a leader that started fresh (empty graph, get_all): the seq its records
        -- continue from. They rebuild the graph from nothing, so no snapshot of an
        -- older epoch is a base for replaying them.
        ALTER TABLE leader_epochs ADD COLUMN fresh_from_seq bigint;
        """,
    ),
]


def check_schema_name(schema: str) -> str:
    """Schema names are interpolated into SQL: allow only plain identifiers."""
    if not _IDENT.match(schema):
        raise ValueError(
            f"DB_SCHEMA={schema!r}: use lower-case letters, digits and _ (max 63 chars)"
        )
    return schema


def barrier_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which the persistor announces committed barriers."""
    return f"{check_schema_name(schema)}_barrier"


def log_channel(schema: str) -> str:
    """The channel on which the persistor announces each committed batch (its last seq):
    a hot standby reads the log when told, instead of polling it."""
    return f"{check_schema_name(schema)}_log"


def leader_lock_key(schema: str) -> str:
    """Text hashed (``hashtext``) into the advisory-lock key of one deployment."""
    return f"rca-leader:{check_schema_name(schema)}"


async def connect(dsn: str, schema: str, **kwargs: object) -> asyncpg.Connection:
    """A connection whose search_path is the deployment's schema."""
    check_schema_name(schema)
    settings = dict(kwargs.pop("server_settings", {}) or {})  # type: ignore[call-overload]
    settings["search_path"] = schema
    return await asyncpg.connect(dsn, server_settings=settings, **kwargs)  # type: ignore[arg-type]


async def create_pool(dsn: str, schema: str, **kwargs: object) -> asyncpg.Pool:
    check_schema_name(schema)
    return await asyncpg.create_pool(  # type: ignore[return-value]
        dsn,
        server_settings={"search_path": schema},
        **kwargs,  # type: ignore[arg-type]
    )


async def migrate(conn: asyncpg.Connection, schema: str) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    check_schema_name(schema)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"rca-migrate:{schema}")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]
            for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
        }
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await conn.execute(sql)
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', version
            )
            applied.append(version)
    if applied:
        log.info("schema migrated", schema=schema, versions=applied)
    return applied


async def drop_schema(conn: asyncpg.Connection, schema: str) -> None:
    """For tests: remove a deployment's schema and everything in it."""
    check_schema_name(schema)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
