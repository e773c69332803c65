"""A deterministic stream of topology changes and alarms, plus scripted playback.

Determinism is the point: the same seed, topology and logical clock start give
byte-identical events, so a test can rebuild in-process the exact graph the
graph service should hold after N events (:func:`reference_events`).

Each event is folded into the :class:`~collector_stub.topology.Topology` at the
moment it is emitted, so the model (what ``get_all`` returns) is always exactly
"initial topology + events emitted so far", even when a multi-event change such
as an instance deletion is cut off by ``--count``.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate, islice
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from collector_stub.topology import (
    ALARM_CATALOGUE,
    INSTANCE,
    INSTANCE_STATES,
    PORT,
    RESOLVED,
    VOLUME,
    Topology,
    TopologyConfig,
    alarm_id,
    alarm_payload,
    entity_event,
    generate_topology,
    pick_alarm,
    snapshot_events,
)
from rca_common.events import Action, Event
from rca_common.timestamps import format_timestamp, parse_timestamp

DEFAULT_CLOCK_START = datetime(2024, 1, 1, tzinfo=UTC)

HOST_DOWN = next(c for c in ALARM_CATALOGUE if c[2] == "Host is unreachable")
INSTANCE_DOWN = next(c for c in ALARM_CATALOGUE if c[2] == "InstanceDown")

STREAM_OPS: tuple[str, ...] = (
    "create_instance",
    "delete_instance",
    "migrate_instance",
    "instance_state",
    "fire_alarm",
    "resolve_alarm",
)

# A planned change: (action, entity type, entity id, payload).
Planned = tuple[str, str, str, dict[str, Any]]


class LogicalClock:
    """Event time that advances by a fixed tick per event, never by the wall clock."""

    def __init__(self, start: datetime = DEFAULT_CLOCK_START, tick_us: int = 1) -> None:
        if tick_us < 1:
            raise ValueError("tick_us must be >= 1")
        self.start = parse_timestamp(start)
        self.tick_us = tick_us
        self.ticks = 0
        self._now = format_timestamp(self.start)

    def now(self) -> datetime:
        return self.start + timedelta(microseconds=self.ticks * self.tick_us)

    def now_str(self) -> str:
        """The current time in wire form (what a snapshot taken now is stamped with)."""
        return self._now

    def advance(self) -> str:
        """Move one tick forward and return the new time in wire form."""
        self.ticks += 1
        self._now = format_timestamp(self.now())
        return self._now

    def advance_to(self, ts: datetime) -> None:
        """Catch up with an external timestamp (scripted events) so time never goes back."""
        ts = parse_timestamp(ts)
        if ts > self.now():
            delta = ts - self.start
            us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            self.ticks = -(-us // self.tick_us)
            self._now = format_timestamp(self.now())


def default_id_prefix(seed: int, clock_start: datetime) -> str:
    """Event-id prefix: seed plus clock start (ms), so a restarted collector with a
    new clock never reuses an id the graph service remembers as already applied."""
    return f"{seed}-{int(parse_timestamp(clock_start).timestamp() * 1000)}"


@dataclass(frozen=True)
class StreamConfig:
    """Shape of the update stream (the topology's seed is separate)."""

    seed: int = 42
    clock_start: datetime = DEFAULT_CLOCK_START
    tick_us: int = 1
    # Emit a host outage storm every this many events (0: never).
    storm_every: int = 0
    # Fraction of the host's instances that get an InstanceDown alarm in a storm.
    storm_fraction: float = 0.8
    # The stream keeps at least this many instances (it creates rather than deletes).
    min_instances: int = 1
    id_prefix: str | None = None
    weights: dict[str, int] = field(
        default_factory=lambda: {
            "create_instance": 8,
            "delete_instance": 6,
            "migrate_instance": 10,
            "instance_state": 20,
            "fire_alarm": 28,
            "resolve_alarm": 28,
        }
    )

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(STREAM_OPS)
        if unknown:
            raise ValueError(f"unknown stream operations {sorted(unknown)}; known: {STREAM_OPS}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("at least one stream operation needs a positive weight")
        if self.storm_every < 0 or not 0.0 <= self.storm_fraction <= 1.0:
            raise ValueError("storm_every must be >= 0 and storm_fraction within 0..1")

    def prefix(self) -> str:
        return self.id_prefix or default_id_prefix(self.seed, self.clock_start)


class UpdateStream:
    """Iterator of wire-form update/delete events that keeps ``topology`` in step.

    Also the collector's logical clock and event-id source: snapshots are stamped
    with :meth:`snapshot`, which uses the same clock.
    """

    def __init__(self, topology: Topology, config: StreamConfig | None = None) -> None:
        self.topology = topology
        self.config = config or StreamConfig()
        # Separate from the topology's generator so stream and topology vary independently.
        self.rng = random.Random(f"stream:{self.config.seed}")
        self.clock = LogicalClock(self.config.clock_start, self.config.tick_us)
        self.id_prefix = self.config.prefix()
        self.emitted = 0
        self.snapshots = 0
        self._pending: deque[Planned] = deque()
        self._ops = list(self.config.weights)
        self._cum_weights = list(accumulate(self.config.weights[o] for o in self._ops))
        self._next_storm = self.config.storm_every or 0
        cfg: TopologyConfig = topology.config
        self._volume_fraction = cfg.volume_fraction()
        self._target_instances = max(len(topology.instances), self.config.min_instances + 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self._pending and not self._plan():
            raise StopIteration  # nothing left to change (an empty topology)
        action, entity_type, entity_id, payload = self._pending.popleft()
        self.emitted += 1
        event = entity_event(
            action,
            entity_type,
            entity_id,
            payload,
            f"{self.id_prefix}-{self.emitted}",
            self.clock.advance(),
        )
        self.topology.apply(event)
        return event

    def take(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` events (already applied to the topology)."""
        return list(islice(self, n))

    def snapshot(self, sources: list[str] | None = None) -> tuple[Iterator[dict[str, Any]], str]:
        """A ``get_all`` answer: (events in wire form, action) for ``sources``.

        The first snapshot is ``init_snapshot``, later ones ``snapshot``. The copy
        is taken now; iterating later is safe while the stream goes on.
        """
        self.snapshots += 1
        action = Action.INIT_SNAPSHOT if self.snapshots == 1 else Action.SNAPSHOT
        items = self.topology.snapshot_items(sources)
        events = snapshot_events(
            items, action.value, self.clock.now_str(), f"{self.id_prefix}-g{self.snapshots}"
        )
        return events, action.value

    def play(self, event: dict[str, Any]) -> None:
        """Fold a scripted (externally made) event in: model and clock follow it."""
        self.topology.apply(event)
        self.clock.advance_to(parse_timestamp(event["sample_timestamp"]))

    # --- planning: only when nothing is pending, so plans see the model as emitted

    def _plan(self) -> bool:
        cfg = self.config
        if cfg.storm_every and self.emitted >= self._next_storm:
            self._next_storm = self.emitted + cfg.storm_every
            if self._storm():
                return True
        op = self.rng.choices(self._ops, cum_weights=self._cum_weights)[0]
        # Keep the instance count near its initial size over a long run.
        n = len(self.topology.instances)
        if op == "create_instance" and n > self._target_instances * 1.1:
            op = "delete_instance"
        elif op == "delete_instance" and n < self._target_instances * 0.9:
            op = "create_instance"
        if getattr(self, f"_{op}")():
            return True
        # Not possible right now (no alarm to resolve, ...): take the first that is.
        return any(getattr(self, f"_{o}")() for o in self._ops)

    def _create_instance(self) -> bool:
        topo, rng = self.topology, self.rng
        if not topo.hosts:
            return False
        state = "ACTIVE"
        iid, payload = topo.new_instance(rng, topo.hosts.pick(rng), state)
        self._pending.append((Action.UPDATE.value, INSTANCE, iid, payload))
        if topo.networks:
            for _ in range(topo.config.ports_per_instance):
                pid, port = topo.new_port(rng, iid, topo.networks.pick(rng), state)
                self._pending.append((Action.UPDATE.value, PORT, pid, port))
        if rng.random() < self._volume_fraction:
            vid, vol = topo.new_volume(rng, iid)
            self._pending.append((Action.UPDATE.value, VOLUME, vid, vol))
        return True

    def _delete_instance(self) -> bool:
        """Delete an instance the way OpenStack does: alarms clear, ports go, volumes detach."""
        topo = self.topology
        if len(topo.instances) <= self.config.min_instances:
            return False
        iid = topo.instances.pick(self.rng)
        ports = topo.referrers("instance_ports", iid)
        for rid in (iid, *ports):
            for aid in topo.referrers("resource_alarms", rid):
                self._pending.append(self._resolution(aid))
        for pid in ports:
            self._pending.append((Action.DELETE.value, PORT, pid, {}))
        for vid in topo.referrers("instance_volumes", iid):
            # Detach; a volume left unattached is then deleted (delete_on_termination),
            # so volumes do not pile up over a long run.
            vol = dict(topo.entities[VOLUME][vid])
            vol["attached_to"] = [i for i in vol.get("attached_to", ()) if i != iid]
            if not vol["attached_to"]:
                vol["state"] = "available"
            self._pending.append((Action.UPDATE.value, VOLUME, vid, vol))
            if not vol["attached_to"]:
                self._pending.append((Action.DELETE.value, VOLUME, vid, {"state": "deleting"}))
        self._pending.append((Action.DELETE.value, INSTANCE, iid, {"state": "DELETED"}))
        return True

    def _migrate_instance(self) -> bool:
        topo, rng = self.topology, self.rng
        if not topo.instances or len(topo.hosts) < 2:
            return False
        iid = topo.instances.pick(rng)
        payload = dict(topo.entities[INSTANCE][iid])
        host = topo.hosts.pick(rng)
        while host == payload.get("host"):
            host = topo.hosts.pick(rng)
        payload["host"] = host
        self._pending.append((Action.UPDATE.value, INSTANCE, iid, payload))
        return True

    def _instance_state(self) -> bool:
        topo, rng = self.topology, self.rng
        if not topo.instances:
            return False
        iid = topo.instances.pick(rng)
        payload = dict(topo.entities[INSTANCE][iid])
        payload["state"] = rng.choice([s for s in INSTANCE_STATES if s != payload.get("state")])
        self._pending.append((Action.UPDATE.value, INSTANCE, iid, payload))
        return True

    def _fire_alarm(self) -> bool:
        picked = pick_alarm(self.topology, self.rng)
        if picked is None:
            return False
        alarm_type, aid, payload = picked
        self._pending.append((Action.UPDATE.value, alarm_type, aid, payload))
        return True

    def _resolve_alarm(self) -> bool:
        if not self.topology.alarms:
            return False
        self._pending.append(self._resolution(self.topology.alarms.pick(self.rng)))
        return True

    def _resolution(self, aid: str) -> Planned:
        alarm_type = self.topology.alarm_type_of(aid)
        assert alarm_type is not None, aid
        payload = dict(self.topology.entities[alarm_type][aid])
        payload["status"] = RESOLVED
        return (Action.UPDATE.value, alarm_type, aid, payload)

    def _storm(self) -> bool:
        """Host outage: the host alarm and InstanceDown on most of its instances at once."""
        topo, rng = self.topology, self.rng
        if not topo.hosts:
            return False
        host = topo.hosts.pick(rng)
        alarm_type, resource_type, name, severity = HOST_DOWN
        aid = alarm_id(alarm_type, host, name)
        if aid not in topo.entities[alarm_type]:
            payload = alarm_payload(name, severity, resource_type, host)
            self._pending.append((Action.UPDATE.value, alarm_type, aid, payload))
        alarm_type, resource_type, name, severity = INSTANCE_DOWN
        for iid in topo.referrers("host_instances", host):
            aid = alarm_id(alarm_type, iid, name)
            if aid in topo.entities[alarm_type] or rng.random() >= self.config.storm_fraction:
                continue
            payload = alarm_payload(name, severity, resource_type, iid)
            self._pending.append((Action.UPDATE.value, alarm_type, aid, payload))
        return bool(self._pending)


def reference_events(
    topology_config: TopologyConfig | None = None,
    seed: int = 42,
    stream_events: int = 0,
    stream_config: StreamConfig | None = None,
) -> tuple[list[dict[str, Any]], Topology]:
    """What a fresh collector publishes if asked ``get_all`` once at start and then
    streams ``stream_events`` updates: (wire events in publish order, final model).

    The stream config's seed defaults to ``seed``. Pure and deterministic.
    """
    topo = generate_topology(topology_config, seed)
    stream = UpdateStream(topo, stream_config or StreamConfig(seed=seed))
    snapshot, _ = stream.snapshot()
    events = list(snapshot)
    events.extend(stream.take(stream_events))
    return events, topo


class ScriptError(ValueError):
    """A script file that cannot be played; the message names the file and the event."""


def load_script(path: str | Path) -> list[dict[str, Any]]:
    """Load a YAML or JSON file holding a list of events (or ``{"events": [...]}``).

    Each event is validated with :class:`rca_common.events.Event` and returned in
    wire form, so what is published is exactly what the graph service accepts.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ScriptError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if isinstance(data, dict) and "events" in data:
        data = data["events"]
    if not isinstance(data, list):
        raise ScriptError(f"{path}: expected a list of events, got {type(data).__name__}")
    events: list[dict[str, Any]] = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise ScriptError(f"{path}: event #{i}: expected a mapping, got {type(raw).__name__}")
        try:
            events.append(Event.model_validate(raw).to_wire())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "event"
            raise ScriptError(f"{path}: event #{i}: {where}: {first['msg']}") from None
    return events
