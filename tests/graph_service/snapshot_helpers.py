"""A processor fed a few hundred varied events: the state the snapshot tests encode."""

from __future__ import annotations

import itertools
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

from graph_service.processor import Processor
from rca_common.events import Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)

_ids = itertools.count()


def event(
    entity_type: str,
    entity_id: str,
    t: float,
    action: str = "update",
    *,
    source: str | None = None,
    **payload: Any,
) -> Event:
    return Event(
        event_id=f"snap-ev-{next(_ids)}",
        source=source or entity_type,
        entity_type=entity_type,
        entity_id=entity_id,
        action=action,
        sample_timestamp=T0 + timedelta(seconds=t),
        payload=payload,
    )


def topology_events(zones: int = 3, hosts: int = 12, instances: int = 150) -> list[Event]:
    """Zones, hosts, networks, instances, ports, volumes, alarms, a move, deletions,
    and a snapshot round with its end marker (so every part of the state is used)."""
    out: list[Event] = []
    t = 0.0
    for z in range(zones):
        out.append(event("nova.zone", f"zone-{z}", t, state="available"))
    for h in range(hosts):
        out.append(event("nova.host", f"host-{h}", t, zone=f"zone-{h % zones}", state="available"))
    for n in range(4):
        out.append(event("neutron.network", f"net-{n}", t, state="ACTIVE", cidr=f"10.{n}.0.0/16"))
    for i in range(instances):
        t += 1
        out.append(
            event("nova.instance", f"vm-{i}", t, host=f"host-{i % hosts}", state="ACTIVE", flavor=i)
        )
        out.append(
            event(
                "neutron.port",
                f"port-{i}",
                t,
                network_id=f"net-{i % 4}",
                device_id=f"vm-{i}",
                state="ACTIVE",
                fixed_ips=[f"10.{i % 4}.0.{i % 250}"],
            )
        )
        if i % 10 == 0:
            out.append(event("cinder.volume", f"vol-{i}", t, attached_to=[f"vm-{i}"], size=i))
    t += 1
    out.append(
        event(
            "zabbix",
            "alarm-cpu-0",
            t,
            name="cpu high",
            resource_type="nova.host",
            resource_id="host-0",
            severity="critical",
            status="firing",
        )
    )
    out.append(event("nova.instance", "vm-1", t, host="host-2", state="ERROR"))  # a move
    for i in range(0, instances, 25):
        out.append(event("nova.instance", f"vm-{i}", t + 1, action="delete"))
    # A snapshot round of the zones' datasource, missing one zone: consistency deletes it.
    t += 2
    for z in range(zones - 1):
        out.append(event("nova.zone", f"zone-{z}", t, action="snapshot", state="available"))
    out.append(
        Event(
            event_id=f"snap-ev-{next(_ids)}",
            source="nova.zone",
            entity_type="nova.zone",
            action="end_snapshot",
            sample_timestamp=T0 + timedelta(seconds=t),
        )
    )
    # An open round (no end marker yet) so the round bookkeeping is not empty.
    out.append(event("nova.host", "host-0", t + 1, action="snapshot", zone="zone-0", state="ok"))
    return out


def build_processor(**sizes: int) -> Processor:
    p = Processor(recent_capacity=10_000)
    for e in topology_events(**sizes):
        p.process(e)
    return p


def fingerprint(p: Processor) -> tuple[bytes, list[str], int, datetime | None, bytes]:
    """Everything a restored processor must reproduce, in byte-comparable form."""
    return (
        pickle.dumps(p.graph, protocol=5),
        list(p.recent._order),
        p.recent.capacity,
        p.clock,
        pickle.dumps(p._round, protocol=5),
    )
