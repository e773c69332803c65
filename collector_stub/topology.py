"""A seeded, OpenStack-like topology held as plain dicts so 100k entities stay cheap.

The model is ``entity type -> entity id -> payload``; relationships live in the
payload fields named in DESIGN.md section 5 (``zone``, ``host``, ``device_id``...).
The same model is what the update stream mutates and what ``get_all`` snapshots,
so :meth:`Topology.apply` is the single place where an event changes it.

Payload dicts are never mutated in place once stored: a change replaces the dict.
That lets a snapshot copy only the id->payload mapping and still be a consistent
point-in-time view while the stream keeps running.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rca_common.events import SCHEMA_VERSION, Action, EntityType

# Entity types as plain strings (what goes on the wire and keys the model).
CLUSTER = EntityType.CLUSTER.value
ZONE = EntityType.ZONE.value
HOST = EntityType.HOST.value
INSTANCE = EntityType.INSTANCE.value
NETWORK = EntityType.NETWORK.value
PORT = EntityType.PORT.value
VOLUME = EntityType.VOLUME.value
ZABBIX = EntityType.ZABBIX.value
PROMETHEUS = EntityType.PROMETHEUS.value
AODH = EntityType.AODH.value

CLUSTER_ID = "cluster-0"

ALARM_TYPES: tuple[str, ...] = (
    ZABBIX,
    PROMETHEUS,
    AODH,
)
ALARM_TYPE_SET = frozenset(ALARM_TYPES)

# Every datasource this collector serves, in the order a snapshot publishes them
# (containers before what they contain, so few placeholders are needed).
SOURCES: tuple[str, ...] = (
    CLUSTER,
    ZONE,
    HOST,
    INSTANCE,
    NETWORK,
    PORT,
    VOLUME,
    *ALARM_TYPES,
)

INSTANCE_STATES: tuple[str, ...] = ("ACTIVE", "SHUTOFF", "SUSPENDED", "PAUSED", "ERROR")
_INITIAL_STATE_WEIGHTS = (90, 4, 2, 1, 3)
VOLUME_SIZES: tuple[int, ...] = (10, 20, 40, 80, 160)
FIRING = "firing"
RESOLVED = "resolved"

# Alarm catalogue: (alarm type, resource type, name, severity).
ALARM_CATALOGUE: tuple[tuple[str, str, str, str], ...] = (
    (ZABBIX, HOST, "Host is unreachable", "disaster"),
    (ZABBIX, HOST, "Processor load is too high", "average"),
    (ZABBIX, HOST, "Free disk space is less than 20%", "warning"),
    (ZABBIX, HOST, "Too many processes", "high"),
    (PROMETHEUS, INSTANCE, "InstanceDown", "critical"),
    (PROMETHEUS, INSTANCE, "HighMemoryUsage", "warning"),
    (PROMETHEUS, HOST, "NodeFilesystemAlmostFull", "warning"),
    (AODH, INSTANCE, "cpu_util_high", "warning"),
    (AODH, INSTANCE, "disk_latency_high", "critical"),
    (AODH, PORT, "port_packet_loss", "warning"),
)


class Edge(NamedTuple):
    """One relationship, in Vitrage's direction (container/alarm is the source)."""

    src_type: str
    src_id: str
    label: str
    dst_type: str
    dst_id: str


@dataclass(frozen=True)
class TopologyConfig:
    """Size of the generated topology; the defaults are a small demo."""

    zones: int = 2
    hosts: int = 8
    instances_per_host: int = 4
    networks: int = 3
    ports_per_instance: int = 1
    # int: that many instances get a volume; float: that fraction of instances.
    volumes: int | float = 0.25
    alarms: int = 4
    projects: int = 4

    def __post_init__(self) -> None:
        for name in ("zones", "hosts", "instances_per_host", "networks", "ports_per_instance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.alarms < 0:
            raise ValueError("alarms must be >= 0")
        if self.projects < 1:
            raise ValueError("projects must be >= 1")
        if self.hosts and not self.zones:
            raise ValueError("hosts need at least one zone")
        if isinstance(self.volumes, float) and not 0.0 <= self.volumes <= 1.0:
            raise ValueError("a volume fraction must be within 0.0..1.0")
        if isinstance(self.volumes, int) and self.volumes < 0:
            raise ValueError("volumes must be >= 0")

    @property
    def instances(self) -> int:
        return self.hosts * self.instances_per_host

    def volume_count(self) -> int:
        """How many instances get a volume attached."""
        if isinstance(self.volumes, float):
            return round(self.volumes * self.instances)
        return min(self.volumes, self.instances)

    def volume_fraction(self) -> float:
        """Probability that a newly created instance gets a volume too."""
        return self.volume_count() / self.instances if self.instances else 0.0

    @classmethod
    def large(cls) -> TopologyConfig:
        """About 127k vertices: the scale the failover benchmarks use."""
        return cls(
            zones=10,
            hosts=1000,
            instances_per_host=50,
            networks=100,
            ports_per_instance=1,
            volumes=0.5,
            alarms=1000,
            projects=50,
        )


def random_uuid(rng: random.Random) -> str:
    """A uuid4-shaped id from ``rng`` (cheaper than ``uuid.UUID``, same look)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def alarm_id(alarm_type: str, resource_id: str, name: str) -> str:
    """Stable alarm id: the same alarm on the same resource always has one id."""
    return f"{alarm_type}:{resource_id}:{name}"


class IndexedSet:
    """Insertion-ordered set with O(1) add, remove and uniform random pick.

    Used instead of ``set`` so that picks depend only on the seed and history,
    never on string hashing (``PYTHONHASHSEED``).
    """

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._pos: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        pos = self._pos.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    def pick(self, rng: random.Random) -> str:
        return self._items[rng.randrange(len(self._items))]

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


# Single-valued references kept in reverse indexes: type -> (index name, payload field).
_REF_FIELDS: dict[str, tuple[str, str]] = {
    INSTANCE: ("host_instances", "host"),
    PORT: ("instance_ports", "device_id"),
    **{t: ("resource_alarms", "resource_id") for t in ALARM_TYPES},
}


def _refs(entity_type: str, payload: dict[str, Any]) -> list[tuple[str, str]]:
    """(index name, referenced id) pairs a payload contributes to the reverse indexes."""
    spec = _REF_FIELDS.get(entity_type)
    if spec is not None:
        ref = payload.get(spec[1])
        return [(spec[0], ref)] if isinstance(ref, str) and ref else []
    if entity_type == VOLUME:
        attached = payload.get("attached_to") or []
        return [("instance_volumes", i) for i in attached if isinstance(i, str)]
    return []


@dataclass
class Topology:
    """The collector's current view of the cloud, plus indexes the stream needs."""

    seed: int
    config: TopologyConfig
    entities: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {source: {} for source in SOURCES}
    )
    # Reverse indexes: referenced id -> ordered set (dict keys) of referring ids.
    indexes: dict[str, dict[str, dict[str, None]]] = field(
        default_factory=lambda: {
            "host_instances": {},
            "instance_ports": {},
            "instance_volumes": {},
            "resource_alarms": {},
        }
    )
    hosts: IndexedSet = field(default_factory=IndexedSet)
    instances: IndexedSet = field(default_factory=IndexedSet)
    ports: IndexedSet = field(default_factory=IndexedSet)
    networks: IndexedSet = field(default_factory=IndexedSet)
    alarms: IndexedSet = field(default_factory=IndexedSet)
    projects: list[str] = field(default_factory=list)
    # Name counters and per-network address counters: names keep counting up
    # across generator and stream, so a new entity never reuses a name or address.
    next_no: dict[str, int] = field(default_factory=lambda: {INSTANCE: 0, PORT: 0, VOLUME: 0})
    next_ip: dict[str, int] = field(default_factory=dict)

    # --- new entities (ids from the caller's rng; not stored until upserted)

    def new_id(self, rng: random.Random, entity_type: str) -> str:
        by_id = self.entities[entity_type]
        while True:
            eid = random_uuid(rng)
            if eid not in by_id:
                return eid

    def _next_name(self, entity_type: str, prefix: str) -> str:
        n = self.next_no[entity_type]
        self.next_no[entity_type] = n + 1
        return f"{prefix}-{n:06d}"

    def new_instance(self, rng: random.Random, host: str, state: str) -> tuple[str, dict[str, Any]]:
        iid = self.new_id(rng, INSTANCE)
        return iid, {
            "name": self._next_name(INSTANCE, "vm"),
            "state": state,
            "host": host,
            "project_id": rng.choice(self.projects),
        }

    def new_port(
        self, rng: random.Random, instance: str, network: str, instance_state: str
    ) -> tuple[str, dict[str, Any]]:
        pid = self.new_id(rng, PORT)
        c = self.next_ip.get(network, 0)
        self.next_ip[network] = c + 1
        cidr = str((self.entities[NETWORK].get(network) or {}).get("cidr", "10.0.0.0/16"))
        prefix = ".".join(cidr.split(".")[:2])
        return pid, {
            "name": self._next_name(PORT, "port"),
            "state": "ACTIVE" if instance_state == "ACTIVE" else "DOWN",
            "device_id": instance,
            "network_id": network,
            "ip_address": f"{prefix}.{(c // 254) % 256}.{c % 254 + 1}",
        }

    def new_volume(self, rng: random.Random, instance: str) -> tuple[str, dict[str, Any]]:
        vid = self.new_id(rng, VOLUME)
        return vid, {
            "name": self._next_name(VOLUME, "vol"),
            "state": "in-use",
            "size": rng.choice(VOLUME_SIZES),
            "attached_to": [instance],
        }

    # --- queries

    def counts(self) -> dict[str, int]:
        """Entities per source (every source listed, zero included)."""
        return {source: len(self.entities[source]) for source in SOURCES}

    def total(self) -> int:
        return sum(len(by_id) for by_id in self.entities.values())

    def get(self, entity_type: str, entity_id: str) -> dict[str, Any] | None:
        return self.entities.get(entity_type, {}).get(entity_id)

    def alarm_type_of(self, alarm_id: str) -> str | None:
        """The alarm type holding ``alarm_id`` (scripted ids need not start with it)."""
        return next((t for t in ALARM_TYPES if alarm_id in self.entities[t]), None)

    def referrers(self, index: str, entity_id: str) -> list[str]:
        """Ids referring to ``entity_id`` through ``index`` (e.g. instances of a host)."""
        return list(self.indexes[index].get(entity_id, ()))

    def expected_edges(self) -> Iterator[Edge]:
        """Every relationship the payloads define, as the graph should hold it."""
        ents = self.entities
        for zid, p in ents[ZONE].items():
            if p.get("cluster"):
                yield Edge(CLUSTER, p["cluster"], "contains", ZONE, zid)
        for hid, p in ents[HOST].items():
            if p.get("zone"):
                yield Edge(ZONE, p["zone"], "contains", HOST, hid)
        for iid, p in ents[INSTANCE].items():
            if p.get("host"):
                yield Edge(HOST, p["host"], "contains", INSTANCE, iid)
        for pid, p in ents[PORT].items():
            if p.get("network_id"):
                yield Edge(NETWORK, p["network_id"], "contains", PORT, pid)
            if p.get("device_id"):
                yield Edge(PORT, pid, "attached", INSTANCE, p["device_id"])
        for vid, p in ents[VOLUME].items():
            for iid in p.get("attached_to") or ():
                yield Edge(VOLUME, vid, "attached", INSTANCE, iid)
        for alarm_type in ALARM_TYPES:
            for aid, p in ents[alarm_type].items():
                if p.get("resource_type") and p.get("resource_id"):
                    yield Edge(alarm_type, aid, "on", p["resource_type"], p["resource_id"])

    def expected_edge_count(self) -> int:
        return sum(1 for _ in self.expected_edges())

    # --- changes

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one wire event into the model (the stream and scripts both use this).

        ``update``/``snapshot`` upsert, ``delete`` removes; an alarm whose status
        is ``resolved`` is removed too (only firing alarms are in a snapshot).
        Types this collector does not model and ``end_snapshot`` are ignored.
        """
        entity_type = event["entity_type"]
        if entity_type not in self.entities:
            return
        action = event["action"]
        entity_id = event["entity_id"]
        payload = event.get("payload") or {}
        if action == Action.END_SNAPSHOT or not entity_id:
            return
        if action == Action.DELETE or (
            entity_type in ALARM_TYPE_SET and payload.get("status") == RESOLVED
        ):
            self.remove(entity_type, entity_id)
        else:
            self.upsert(entity_type, entity_id, payload)

    def upsert(self, entity_type: str, entity_id: str, payload: dict[str, Any]) -> None:
        """Store ``payload`` (not copied: callers must not mutate it afterwards)."""
        by_id = self.entities[entity_type]
        old = by_id.get(entity_id)
        if old is not None:
            self._unindex(entity_type, entity_id, old)
        by_id[entity_id] = payload
        for index, ref in _refs(entity_type, payload):
            self.indexes[index].setdefault(ref, {})[entity_id] = None
        picker = self.picker(entity_type)
        if picker is not None:
            picker.add(entity_id)

    def remove(self, entity_type: str, entity_id: str) -> None:
        old = self.entities[entity_type].pop(entity_id, None)
        if old is None:
            return
        self._unindex(entity_type, entity_id, old)
        picker = self.picker(entity_type)
        if picker is not None:
            picker.discard(entity_id)

    def _unindex(self, entity_type: str, entity_id: str, payload: dict[str, Any]) -> None:
        for index, ref in _refs(entity_type, payload):
            refs = self.indexes[index].get(ref)
            if refs is not None:
                refs.pop(entity_id, None)
                if not refs:
                    del self.indexes[index][ref]

    def picker(self, entity_type: str) -> IndexedSet | None:
        """The random-pick set of a type the stream chooses from (None for others)."""
        if entity_type in ALARM_TYPE_SET:
            return self.alarms
        return {
            HOST: self.hosts,
            INSTANCE: self.instances,
            PORT: self.ports,
            NETWORK: self.networks,
        }.get(entity_type)

    # --- snapshots

    def snapshot_items(
        self, sources: Sequence[str] | None = None
    ) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
        """A point-in-time copy of (source, [(id, payload)...]) for ``get_all``.

        Only the mappings are copied; payload dicts are immutable by convention,
        so later stream events do not leak into the copy.
        """
        wanted = SOURCES if sources is None else sources
        return [(source, list(self.entities[source].items())) for source in wanted]


def entity_event(
    action: str,
    entity_type: str,
    entity_id: str,
    payload: dict[str, Any],
    event_id: str,
    timestamp: str,
) -> dict[str, Any]:
    """One event in wire form (what ``Event.to_wire`` produces), built without pydantic."""
    return {
        "version": SCHEMA_VERSION,
        "event_id": event_id,
        "source": entity_type,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "action": action,
        "sample_timestamp": timestamp,
        "payload": payload,
    }


def snapshot_events(
    items: Iterable[tuple[str, list[tuple[str, dict[str, Any]]]]],
    action: str,
    timestamp: str,
    id_prefix: str,
) -> Iterator[dict[str, Any]]:
    """A snapshot in wire form: each source's entities, then its ``end_snapshot`` marker.

    Every event carries the same ``timestamp`` (the logical clock when the copy
    was taken), so it is never older than an update already published, and the
    end marker's time tells the consumer which unlisted entities are stale.
    """
    n = 0
    for source, entries in items:
        for entity_id, payload in entries:
            yield entity_event(action, source, entity_id, payload, f"{id_prefix}-{n}", timestamp)
            n += 1
        yield entity_event(
            Action.END_SNAPSHOT, source, "", {"count": len(entries)}, f"{id_prefix}-{n}", timestamp
        )
        n += 1


def generate_topology(config: TopologyConfig | None = None, seed: int = 42) -> Topology:
    """Build the initial topology; the same (config, seed) always gives the same model."""
    cfg = config or TopologyConfig()
    rng = random.Random(seed)
    topo = Topology(seed=seed, config=cfg)
    topo.projects = [random_uuid(rng).replace("-", "") for _ in range(cfg.projects)]

    topo.upsert(CLUSTER, CLUSTER_ID, {"name": "openstack", "state": "available"})
    zone_ids = [f"zone-{z:02d}" for z in range(cfg.zones)]
    for zid in zone_ids:
        topo.upsert(ZONE, zid, {"name": zid, "state": "available", "cluster": CLUSTER_ID})
    host_ids = [f"host-{h:04d}" for h in range(cfg.hosts)]
    for h, hid in enumerate(host_ids):
        topo.upsert(
            HOST,
            hid,
            {"name": hid, "state": "available", "zone": zone_ids[h % cfg.zones]},
        )
    network_ids: list[str] = []
    for n in range(cfg.networks):
        nid = random_uuid(rng)
        network_ids.append(nid)
        topo.upsert(
            NETWORK,
            nid,
            {
                "name": f"net-{n:03d}",
                "state": "ACTIVE",
                "project_id": rng.choice(topo.projects),
                "cidr": f"10.{n % 256}.0.0/16",
            },
        )

    states = rng.choices(INSTANCE_STATES, _INITIAL_STATE_WEIGHTS, k=cfg.instances)
    instance_ids: list[str] = []
    for i, hid in enumerate(h for h in host_ids for _ in range(cfg.instances_per_host)):
        iid, payload = topo.new_instance(rng, hid, states[i])
        topo.upsert(INSTANCE, iid, payload)
        instance_ids.append(iid)
        for _ in range(cfg.ports_per_instance if network_ids else 0):
            pid, payload = topo.new_port(rng, iid, rng.choice(network_ids), states[i])
            topo.upsert(PORT, pid, payload)
    for i in sorted(rng.sample(range(len(instance_ids)), cfg.volume_count())):
        vid, payload = topo.new_volume(rng, instance_ids[i])
        topo.upsert(VOLUME, vid, payload)

    made = misses = 0
    while made < cfg.alarms and misses < 100:
        picked = pick_alarm(topo, rng)
        if picked is None:
            misses += 1
            continue
        alarm_type, aid, payload = picked
        topo.upsert(alarm_type, aid, payload)
        made += 1
    return topo


def pick_alarm(
    topo: Topology, rng: random.Random, attempts: int = 8
) -> tuple[str, str, dict[str, Any]] | None:
    """(alarm type, id, payload) of a random alarm not firing yet on a live resource."""
    for _ in range(attempts):
        alarm_type, resource_type, name, severity = rng.choice(ALARM_CATALOGUE)
        picker = topo.picker(resource_type)
        if not picker:
            continue
        resource_id = picker.pick(rng)
        aid = alarm_id(alarm_type, resource_id, name)
        if aid in topo.entities[alarm_type]:
            continue
        return alarm_type, aid, alarm_payload(name, severity, resource_type, resource_id)
    return None


def alarm_payload(name: str, severity: str, resource_type: str, resource_id: str) -> dict[str, Any]:
    """A firing alarm's payload (resolution replaces ``status``)."""
    return {
        "name": name,
        "severity": severity,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "status": FIRING,
    }
