"""Every setting of every service, read from the environment only.

Each field is documented where it is declared; the README table is generated
from the same declarations (``python -m rca_common.settings``). A bad value
stops startup with one line naming the variable.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class QueueType(StrEnum):
    CLASSIC = "classic"
    QUORUM = "quorum"


def _doc(text: str, default: object) -> object:
    return Field(default=default, description=text)


class Settings(BaseSettings):
    """Environment configuration shared by graph-service, persistor-service and collector-stub."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- connections
    amqp_url: str = _doc("RabbitMQ connection URL.", "amqp://guest:guest@127.0.0.1:5672/")
    database_url: str = _doc(
        "PostgreSQL connection string.", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    db_schema: str = _doc(
        "PostgreSQL schema holding the tables (one per deployment or test run).", "rca"
    )

    # --- broker names
    events_queue: str = _doc("Durable queue the collectors publish events to.", "graph.events")
    dead_letter_queue: str = _doc(
        "Queue that receives malformed messages, with the reason in a header.", "graph.events.dlq"
    )
    collector_rpc_queue: str = _doc("Queue of the collectors' get_all RPC.", "collector.rpc")
    processed_exchange: str = _doc(
        "Durable fanout exchange of processed-event records.", "graph.processed"
    )
    persistor_queue: str = _doc(
        "Durable queue bound to the processed exchange, drained by the persistor.",
        "persistor.events",
    )
    queue_type: QueueType = _doc(
        "`classic` or `quorum` (replicated across a RabbitMQ cluster).", QueueType.CLASSIC
    )
    prefetch: Annotated[int, Field(gt=0)] = _doc(
        "Unacknowledged messages the graph service may hold (each may carry many events).", 256
    )

    # --- graph service
    http_host: str = _doc("Address the graph HTTP API listens on.", "127.0.0.1")
    http_port: Annotated[int, Field(ge=0, le=65535)] = _doc("Port of the graph HTTP API.", 8999)
    get_all_timeout: Annotated[float, Field(gt=0)] = _doc(
        "Seconds to wait for a collector to answer get_all before serving what we have.", 60.0
    )
    get_all_retry_interval: Annotated[float, Field(gt=0)] = _doc(
        "Seconds between background get_all retries after a timeout.", 30.0
    )
    min_time_to_delete: Annotated[float, Field(ge=0)] = _doc(
        "Seconds (of event time) a deleted vertex is kept before it is physically removed.", 600.0
    )
    recent_event_ids: Annotated[int, Field(gt=0)] = _doc(
        "How many recent event ids are remembered to recognise redeliveries.", 200_000
    )
    shutdown_timeout: Annotated[float, Field(gt=0)] = _doc(
        "Seconds in-flight work may take after SIGTERM before it is cancelled.", 10.0
    )
    templates_dir: Path | None = _doc("Directory of evaluator templates (`*.yaml`).", None)

    # --- persistence and failover
    enable_persistency: bool = _doc(
        "Publish processed events, store snapshots, recover from them.", True
    )
    snapshot_interval: Annotated[float, Field(gt=0)] = _doc(
        "The age beyond which a takeover does not use a snapshot. The active keeps one younger"
        " than this stored: one as soon as it is active, then one each time the last reaches"
        " 90 % of this age, and after every get_all.",
        600.0,
    )
    snapshots_kept: Annotated[int, Field(gt=0)] = _doc("Snapshots kept in PostgreSQL.", 3)
    snapshot_hmac_key: str | None = _doc(
        "When set, snapshots are signed with HMAC-SHA256 and verified before loading.", None
    )
    snapshot_in_child: bool = _doc(
        "Serialise snapshots in a forked child (like Redis BGSAVE): the event loop pauses only"
        " for the fork. `false`: pickle on the loop, compress in a thread (platforms without"
        " fork use this anyway).",
        True,
    )
    hot_standby: bool = _doc(
        "A standby keeps a replica of the graph: seeded from the newest snapshot, then"
        " applying every batch the persistor commits, so that a takeover replays only the"
        " records committed since its last read. Costs a standby the memory of one graph."
        " `false`: the standby only preloads the newest snapshot (`STANDBY_PRELOAD_INTERVAL`).",
        True,
    )
    standby_preload_interval: Annotated[float, Field(ge=0)] = _doc(
        "Seconds between a standby's checks for a newer snapshot, which it then loads"
        " ahead of a takeover (the takeover skips the decode when that snapshot is still the"
        " one to use); costs a standby the memory of one graph. `0` turns preloading off."
        " A hot standby reads the log when the persistor announces a commit, and at least"
        " this often (2 s when `0`).",
        2.0,
    )
    barrier_timeout: Annotated[float, Field(gt=0)] = _doc(
        "Seconds to wait for the persistor to commit the takeover barrier.", 10.0
    )
    reconcile_after_takeover: bool = _doc(
        "Run a background get_all after a takeover from a snapshot.", True
    )
    log_batch_max: Annotated[int, Field(gt=0)] = _doc(
        "Records per processed-event message at most (batching on the wire).", 500
    )
    log_batch_delay: Annotated[float, Field(ge=0)] = _doc(
        "Seconds a partial batch of records may wait before it is published.", 0.005
    )
    log_max_unconfirmed: Annotated[int, Field(gt=0)] = _doc(
        "Published but unconfirmed records at most before processing waits (backpressure).",
        50_000,
    )
    leader_check_interval: Annotated[float, Field(gt=0)] = _doc(
        "Seconds between checks of the leader-lock connection.", 0.5
    )
    leader_fence_timeout: Annotated[float, Field(gt=0)] = _doc(
        "Seconds without a successful lock check after which the active fences itself;"
        " must be shorter than the time PostgreSQL needs to drop a dead lock connection.",
        3.0,
    )
    lock_keepalives_idle: Annotated[int, Field(gt=0)] = _doc(
        "TCP keepalive idle seconds on the lock connection (both ends).", 2
    )
    lock_keepalives_interval: Annotated[int, Field(gt=0)] = _doc(
        "TCP keepalive probe interval in seconds on the lock connection.", 1
    )
    lock_keepalives_count: Annotated[int, Field(gt=0)] = _doc(
        "Unanswered keepalive probes before the lock connection is dropped.", 3
    )
    lock_tcp_user_timeout: Annotated[int, Field(ge=0)] = _doc(
        "Milliseconds unacknowledged data may wait before the lock connection is dropped.",
        5000,
    )

    drill_crash_at: str | None = _doc(
        "Failover drills only: `point:n` makes the graph service SIGKILL itself the n-th time"
        " it passes `point` (publish, before_ack, snapshot, replay).",
        None,
    )
    drill_hooks: bool = _doc(
        "Failover drills only: enables `POST /v1/admin/crash-point` to arm a crash point.",
        False,
    )

    # --- persistor
    persistor_batch_max: Annotated[int, Field(gt=0)] = _doc(
        "Records the persistor writes per transaction at most.", 5000
    )
    persistor_prefetch: Annotated[int, Field(gt=0)] = _doc(
        "Unacknowledged messages the persistor may hold.", 64
    )
    persistor_http_port: Annotated[int, Field(ge=0, le=65535)] = _doc(
        "Port of the persistor's health and metrics endpoint (0: none).", 8998
    )
    prune_events: bool = _doc(
        "Delete events that no kept snapshot needs; false keeps the whole log (audits, drills).",
        True,
    )
    prune_interval: Annotated[float, Field(gt=0)] = _doc(
        "Seconds between prunes of snapshots and events no kept snapshot needs.", 60.0
    )

    # --- collector stub
    collector_seed: int = _doc("Seed of the collector's topology and update stream.", 42)
    collector_rate: Annotated[float, Field(ge=0)] = _doc(
        "Update events per second the collector streams (0: none).", 0.0
    )
    collector_clock_start: datetime | None = _doc(
        "Start of the collector's logical event clock (ISO-8601, naive means UTC); unset: the"
        " wall clock at start-up. Set it to make event timestamps and ids reproducible.",
        None,
    )
    collector_storm_every: Annotated[float, Field(ge=0)] = _doc(
        "Seconds of streaming between host-outage alarm storms (0: none).", 0.0
    )
    collector_batch_size: Annotated[int, Field(gt=0)] = _doc(
        "Events per message the collector publishes (snapshots; streams flush sooner).", 500
    )
    collector_flush_interval: Annotated[float, Field(gt=0)] = _doc(
        "Seconds a streamed event may wait for more events to share its message.", 0.02
    )

    # --- logging
    log_level: str = _doc("Log level (debug, info, warning, error).", "info")
    log_format: str = _doc("`json` (one JSON object a line) or `console`.", "json")

    @field_validator("db_schema")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", value):
            raise ValueError("use lower-case letters, digits and _ (at most 63)")
        return value

    def masked_amqp_url(self) -> str:
        return mask_url(self.amqp_url)

    def masked_database_url(self) -> str:
        return mask_url(self.database_url)

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            if name in ("amqp_url", "database_url"):
                yield name, mask_url(str(value))
            elif name == "snapshot_hmac_key" and value:
                yield name, "***"
            else:
                yield name, value


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class ConfigError(SystemExit):
    """Raised with a one-line message naming the bad variable."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad variable raises ConfigError (exit code 2)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        var = str(err["loc"][0]).upper() if err["loc"] else "?"
        raise ConfigError(
            f"configuration error: {var}={err.get('input')!r}: {err['msg']}"
        ) from None


def settings_or_exit() -> Settings:
    """For entry points: print the one-line error to stderr and exit 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(exc.code, file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table() -> str:
    """The README's table of environment variables, from the declarations above."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if hasattr(default, "value"):
            default = default.value
        shown = "(unset)" if default is None else f"`{default}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
