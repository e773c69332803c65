"""Shared pieces of the evaluator tests: templates from text, a processor with an
evaluator, and views of what the evaluator put in the graph."""

from __future__ import annotations

import textwrap
from typing import Any

from graph_service.entity_graph import IS_DELETED, TYPE
from graph_service.evaluator import Evaluator, run_to_fixpoint
from graph_service.processor import Outcome, Processor
from graph_service.templates import Template, load_templates, validate_text
from rca_common.events import Event
from tests.graph_service.core_helpers import ev

HOST_DOWN = "Host is unreachable"

# A small valid template; tests edit copies of it.
BASIC = """\
metadata:
  version: 3
  name: basic
  type: standard
  description: a host alarm on a host with instances
entities:
  host_alarm:
    type: zabbix
    name: Host is unreachable
  host:
    type: nova.host
  instance:
    type: nova.instance
scenarios:
  - condition: host_alarm [on] host AND host [contains] instance
    actions:
      - raise_alarm:
          target: instance
          alarm_name: Instance affected
          severity: critical
          causing_alarm: host_alarm
"""


def template(text: str, name: str = "test.yaml", **params: Any) -> Template:
    return validate_text(textwrap.dedent(text), name, params=params or None)


def shipped() -> list[Template]:
    templates, errors = load_templates()
    assert errors == []
    return templates


class Env:
    """A processor with an evaluator; ``run`` processes an event to the fixpoint."""

    def __init__(self, templates: list[Template], **processor_args: Any) -> None:
        self.p = Processor(**processor_args)
        self.evaluator = Evaluator(templates)
        self.log: list[Outcome] = []

    def run(self, event: Event) -> list[Outcome]:
        outcomes = run_to_fixpoint(self.p, self.evaluator, event)
        self.log.extend(outcomes)
        return outcomes

    def actions(self, event: Event) -> list[dict[str, Any]]:
        """Run an event; the steps of the rounds it led to, in order."""
        return [step for o in self.run(event)[1:] for step in o.event.payload["steps"]]

    def vertex(self, vid: str) -> dict[str, Any]:
        attrs = self.p.graph.vertex(vid)
        assert attrs is not None, vid
        return attrs


def deduced(p: Processor) -> dict[tuple[str, str], dict[str, Any]]:
    """Live deduced alarms: (target vid, alarm name) -> properties."""
    return {
        (a["vitrage_resource_id"], a["name"]): a
        for _, a in p.graph.vertices()
        if a.get(TYPE) == "vitrage" and not a.get(IS_DELETED)
    }


def live_edges(p: Processor, label: str) -> set[tuple[str, str]]:
    return {(s, d) for s, d, k, a in p.graph.edges() if k == label and not a.get(IS_DELETED)}


# -------------------------------------------------------------- event builders
def host(h: str, t: float, **payload: Any) -> Event:
    return ev("nova.host", h, t, zone="z1", state="available", **payload)


def instance(i: str, h: str, t: float, state: str = "ACTIVE", **payload: Any) -> Event:
    return ev("nova.instance", i, t, host=h, state=state, **payload)


def alarm(
    atype: str,
    aid: str,
    name: str,
    rtype: str,
    rid: str,
    t: float,
    status: str = "firing",
    severity: str = "high",
) -> Event:
    return ev(
        atype,
        aid,
        t,
        name=name,
        severity=severity,
        resource_type=rtype,
        resource_id=rid,
        status=status,
    )


def host_alarm(aid: str, h: str, t: float, status: str = "firing") -> Event:
    return alarm("zabbix", aid, HOST_DOWN, "nova.host", h, t, status, "disaster")


def instance_down(aid: str, i: str, t: float, status: str = "firing") -> Event:
    return alarm("prometheus", aid, "InstanceDown", "nova.instance", i, t, status, "critical")
