"""Scripted mode: a YAML/JSON file of events, validated against the wire contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector_stub.stream import ScriptError, StreamConfig, UpdateStream, load_script
from collector_stub.topology import generate_topology

GOOD_YAML = """
# a host outage, then its recovery
- event_id: s-1
  source: zabbix
  entity_type: zabbix
  entity_id: "zabbix:host-0001:Host is unreachable"
  action: update
  sample_timestamp: "2024-01-01T00:00:01Z"
  payload:
    name: Host is unreachable
    severity: disaster
    resource_type: nova.host
    resource_id: host-0001
    status: firing
  custom_field: kept
- event_id: s-2
  source: nova.instance
  entity_type: nova.instance
  entity_id: vm-new
  action: update
  sample_timestamp: "2024-01-01T00:00:02+00:00"
  payload: {name: vm-new, state: ACTIVE, host: host-0001, project_id: p1}
- event_id: s-3
  source: zabbix
  entity_type: zabbix
  entity_id: "zabbix:host-0001:Host is unreachable"
  action: update
  sample_timestamp: "2024-01-01T00:00:03Z"
  payload:
    name: Host is unreachable
    severity: disaster
    resource_type: nova.host
    resource_id: host-0001
    status: resolved
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_script_is_parsed_into_wire_events(tmp_path: Path) -> None:
    events = load_script(write(tmp_path, "storm.yaml", GOOD_YAML))
    assert [e["event_id"] for e in events] == ["s-1", "s-2", "s-3"]
    assert events[0]["sample_timestamp"] == "2024-01-01T00:00:01.000000Z"
    assert events[0]["custom_field"] == "kept"  # unknown fields survive
    assert events[1]["payload"]["host"] == "host-0001"


def test_json_script_with_events_key(tmp_path: Path) -> None:
    text = (
        '{"events": [{"event_id": "j1", "source": "nova.host", "entity_type": "nova.host",'
        ' "entity_id": "host-9", "action": "update",'
        ' "sample_timestamp": "2024-01-01T00:00:00Z", "payload": {"name": "host-9"}}]}'
    )
    assert load_script(write(tmp_path, "one.json", text))[0]["entity_id"] == "host-9"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- event_id: x\n  source: s\n", r"event #0: entity_type: Field required"),
        (GOOD_YAML.replace("action: update", "action: explode", 1), r"event #0: action"),
        (GOOD_YAML.replace('"2024-01-01T00:00:02+00:00"', "yesterday"), r"event #1: sample_"),
        ("just: a mapping\n", r"expected a list of events"),
        ("- [1, 2]\n", r"event #0: expected a mapping"),
        ("- {unclosed\n", r"not valid yaml"),
    ],
)
def test_malformed_script_is_rejected_with_a_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ScriptError, match=message) as info:
        load_script(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_script_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read"):
        load_script(tmp_path / "nope.yaml")


def test_playing_a_script_updates_model_and_clock(tmp_path: Path) -> None:
    topo = generate_topology(seed=1)
    stream = UpdateStream(topo, StreamConfig(seed=1))
    events = load_script(write(tmp_path, "storm.yaml", GOOD_YAML))
    stream.play(events[0])
    assert "zabbix:host-0001:Host is unreachable" in topo.entities["zabbix"]
    for event in events[1:]:
        stream.play(event)
    assert "zabbix:host-0001:Host is unreachable" not in topo.entities["zabbix"]
    assert topo.get("nova.instance", "vm-new")["host"] == "host-0001"
    assert stream.clock.now_str() == "2024-01-01T00:00:03.000000Z"
    assert stream.take(1)[0]["sample_timestamp"] == "2024-01-01T00:00:03.000001Z"
