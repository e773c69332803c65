"""Command-line parsing and the RPC request parser (no broker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector_stub.main import build_parser, storm_every_events, topology_config
from collector_stub.rpc import RequestError, parse_request
from collector_stub.topology import TopologyConfig
from rca_common.settings import load_settings


def parse(*argv: str):
    return build_parser(load_settings(collector_seed=5, collector_rate=2.5)).parse_args(argv)


def test_defaults_come_from_settings() -> None:
    args = parse()
    assert args.seed == 5
    assert args.rate == 2.5
    assert topology_config(args) == TopologyConfig()


def test_topology_flags() -> None:
    args = parse("--zones", "3", "--hosts", "9", "--instances-per-host", "2", "--volumes", "0.5")
    cfg = topology_config(args)
    assert (cfg.zones, cfg.hosts, cfg.instances_per_host, cfg.volumes) == (3, 9, 2, 0.5)
    assert topology_config(parse("--volumes", "7")).volumes == 7
    assert topology_config(parse("--large", "--hosts", "10")).instances_per_host == 50


def test_bad_flag_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        parse("--hosts", "-1")
    assert info.value.code == 2


def test_storms_are_scheduled_in_events() -> None:
    assert storm_every_events(10, 100) == 1000
    assert storm_every_events(0, 100) == 0
    assert storm_every_events(10, 0) == 0


@pytest.mark.parametrize(
    ("body", "sources"),
    [
        (b'{"action": "get_all", "sources": null}', None),
        (b'{"action": "get_all"}', None),
        (
            b'{"action": "get_all", "sources": ["nova.host", "zabbix", "nova.host"]}',
            ["nova.host", "zabbix"],
        ),
        (b'{"action": "get_all", "sources": []}', []),
    ],
)
def test_valid_requests(body: bytes, sources: list[str] | None) -> None:
    assert parse_request(body) == sources


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"get_all please", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"action": "get_some"}', "unknown action"),
        (b'{"action": "get_all", "sources": "nova.host"}', "list of source names"),
        (b'{"action": "get_all", "sources": ["nova.hosts"]}', "unknown sources"),
    ],
)
def test_malformed_requests(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(body)


def test_bad_script_exits_2_before_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {event_id: x, source: s, entity_type: t, action: nope}\n")
    env = {**os.environ, "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}  # never reached
    proc = subprocess.run(
        [sys.executable, "-m", "collector_stub", "--script", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "bad.yaml: event #0: action" in proc.stderr
