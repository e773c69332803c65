"""Fast failover with real processes: the drill, fallbacks, fencing (DESIGN section 4)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import aio_pika
import httpx
import pytest

from collector_stub.topology import TopologyConfig
from failover_drill.drill import Drill, DrillConfig
from rca_common import db
from tests.conftest import Processes, settings_from, wait_for, wait_http
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

SMALL = ["--zones", "1", "--hosts", "4", "--instances-per-host", "3", "--alarms", "3"]


async def _status(url: str) -> dict:  # type: ignore[type-arg]
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(url + "/status")).json()  # type: ignore[no-any-return]


async def test_short_drill_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    """Kills in every chosen phase plus a random one and a persistor kill."""
    cfg = DrillConfig(
        events=2500,
        random_kills=1,
        topology=TopologyConfig(zones=2, hosts=6, instances_per_host=4, networks=2, alarms=6),
        workdir=tmp_path,
    )
    report = await Drill(cfg).run()
    totals = report["totals"]
    assert report["graph"]["equal"], report["graph"]
    assert totals["lost"] == 0 and totals["duplicated"] == 0, report
    assert totals["deduced_raised_twice"] == 0
    assert totals["deduced_alarms_live"] > 0, "the storms should leave deduced alarms"
    assert totals["get_all_answered"] == 1
    assert report["ok"]
    assert [k["kind"] for k in report["kills"]] == [*cfg.plan, "random"]
    for kill in report["kills"]:
        assert kill["kill_to_ready_s"] > 0
        assert kill["recovery"]["mode"] in ("hot", "snapshot"), kill
    # A standby that stood by long enough takes over with its replica (HOT_STANDBY);
    # one restarted a moment before the kill may not be seeded yet.
    assert any(k["recovery"]["mode"] == "hot" for k in report["kills"]), report["kills"]
    assert report["persistor_kill"]["events_published_while_down"] > 0


async def test_no_persistor_answer_means_fresh_start_with_the_reason(
    processes: Processes, broker: aio_pika.abc.AbstractChannel, test_env: dict[str, str]
) -> None:
    processes.start("collector-stub", *SMALL)
    graph = processes.start("graph-service", http=True, BARRIER_TIMEOUT="0.5")
    await wait_http(graph, "/readyz")
    recovery = (await _status(graph.url))["recovery"]
    assert recovery["mode"] == "fresh"
    assert "did not commit barrier(1) within 0.5s" in recovery["reason"]
    # The fresh start is on record, so that no older snapshot is replayed across it.
    settings = settings_from(test_env)
    conn = await db.connect(settings.database_url, settings.db_schema)
    try:
        row = await conn.fetchrow("SELECT epoch, fresh_from_seq FROM leader_epochs")
    finally:
        await conn.close()
    assert (row["epoch"], row["fresh_from_seq"]) == (1, 0)


async def test_persistency_off_publishes_nothing_and_starts_fresh(
    processes: Processes, broker: aio_pika.abc.AbstractChannel, test_env: dict[str, str]
) -> None:
    processes.start("collector-stub", *SMALL, "--rate", "200")
    graph = processes.start("graph-service", http=True, ENABLE_PERSISTENCY="false")
    await wait_http(graph, "/readyz")

    async def processed_some() -> bool:
        return ((await _status(graph.url))["last_seq"] or 0) > 100

    await wait_for(processed_some, what="stream events processed")
    queue = await broker.declare_queue(test_env["PERSISTOR_QUEUE"], passive=True)
    assert queue.declaration_result.message_count == 0
    status = await _status(graph.url)
    assert status["recovery"]["mode"] == "fresh"
    assert status["snapshot"] == {"state": "none taken"}


async def test_snapshot_older_than_the_interval_is_not_used(
    processes: Processes, broker: aio_pika.abc.AbstractChannel, test_env: dict[str, str]
) -> None:
    processes.start("persistor-service", PERSISTOR_HTTP_PORT="0")
    processes.start("collector-stub", *SMALL)
    first = processes.start("graph-service", http=True, RECONCILE_AFTER_TAKEOVER="false")
    await wait_http(first, "/readyz")

    async def snapshot_stored() -> bool:
        return (await _status(first.url))["snapshot"].get("state") == "stored"

    await wait_for(snapshot_stored, what="first snapshot")
    first_id = (await _status(first.url))["snapshot"]["snapshot_id"]
    assert processes.stop(first) == 0

    # A takeover right away uses the snapshot (loaded by the takeover, or by the hot
    # standby's seed, which a takeover lets finish when it was under way)...
    second = processes.start("graph-service", http=True, RECONCILE_AFTER_TAKEOVER="false")
    await wait_http(second, "/readyz")
    recovery = (await _status(second.url))["recovery"]
    assert recovery["mode"] in ("snapshot", "hot") and recovery["snapshot_id"] == first_id

    # ...and stores one of its own at once: the one it loaded may be nearly too old.
    async def own_snapshot() -> bool:
        snapshot = (await _status(second.url))["snapshot"]
        return snapshot.get("state") == "stored" and snapshot["snapshot_id"] != first_id

    await wait_for(own_snapshot, what="the new active's first snapshot")
    assert processes.stop(second) == 0

    # ...but not after a downtime longer than SNAPSHOT_INTERVAL.
    settings = settings_from(test_env)
    conn = await db.connect(settings.database_url, settings.db_schema)
    try:
        await conn.execute("UPDATE graph_snapshots SET created_at = now() - interval '2 hours'")
    finally:
        await conn.close()
    third = processes.start("graph-service", http=True, SNAPSHOT_INTERVAL="3600")
    await wait_http(third, "/readyz")
    recovery = (await _status(third.url))["recovery"]
    assert recovery["mode"] == "fresh"
    assert recovery["reason"] == "no usable snapshot"


async def test_active_that_loses_its_lock_connection_exits_non_zero(
    processes: Processes, broker: aio_pika.abc.AbstractChannel
) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    try:
        graph = processes.start(
            "graph-service",
            http=True,
            ENABLE_PERSISTENCY="false",
            GET_ALL_TIMEOUT="0.5",
            LEADER_FENCE_TIMEOUT="1",
            LEADER_CHECK_INTERVAL="0.1",
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres",
        )
        await wait_http(graph, "/readyz")
        cut = time.monotonic()
        proxy.freeze()
        await wait_for(lambda: not graph.alive(), timeout=15, what="graph-service to exit")
        assert time.monotonic() - cut < 10
        assert graph.popen.returncode == 3
        assert "fencing" in graph.log()
    finally:
        await proxy.close()


async def test_a_standby_preloads_the_snapshot_its_takeover_then_uses(
    processes: Processes, broker: aio_pika.abc.AbstractChannel
) -> None:
    processes.start("persistor-service", PERSISTOR_HTTP_PORT="0")
    processes.start("collector-stub", *SMALL)
    first = processes.start("graph-service", http=True, RECONCILE_AFTER_TAKEOVER="false")
    await wait_http(first, "/readyz")

    async def stored_snapshot() -> int | None:
        snapshot = (await _status(first.url))["snapshot"]
        return snapshot.get("snapshot_id") if snapshot.get("state") == "stored" else None

    await wait_for(stored_snapshot, what="first snapshot")
    snapshot_id = await stored_snapshot()
    standby = processes.start(
        "graph-service",
        http=True,
        RECONCILE_AFTER_TAKEOVER="false",
        STANDBY_PRELOAD_INTERVAL="0.1",
        HOT_STANDBY="false",
    )
    await wait_http(standby, "/healthz")

    async def preloaded() -> bool:
        status = await _status(standby.url)
        return status.get("standby_preload", {}).get("snapshot_id") == snapshot_id

    await wait_for(preloaded, what="the standby preloading the snapshot")
    assert processes.stop(first) == 0
    await wait_http(standby, "/readyz")
    status = await _status(standby.url)
    assert status["recovery"]["mode"] == "snapshot"
    assert status["recovery"]["snapshot_id"] == snapshot_id
    assert status["recovery"]["snapshot_preloaded"] is True
    assert "standby_preload" not in status  # the copy was handed over, not kept


async def test_a_hot_standby_follows_the_log_and_takes_over_with_its_replica(
    processes: Processes, broker: aio_pika.abc.AbstractChannel
) -> None:
    processes.start("persistor-service", PERSISTOR_HTTP_PORT="0")
    processes.start("collector-stub", *SMALL, "--rate", "200")
    first = processes.start("graph-service", http=True, RECONCILE_AFTER_TAKEOVER="false")
    await wait_http(first, "/readyz")
    standby = processes.start("graph-service", http=True, RECONCILE_AFTER_TAKEOVER="false")
    await wait_http(standby, "/healthz")

    async def following() -> dict | None:  # type: ignore[type-arg]
        hot = (await _status(standby.url)).get("hot_standby") or {}
        return hot if hot.get("state") == "following" and hot.get("applied", 0) > 50 else None

    await wait_for(following, what="the hot standby following the active's log")
    hot = await following()
    assert hot is not None and hot["last_seq"] > hot["snapshot_seq"]
    assert processes.stop(first, signal.SIGKILL) != 0
    await wait_http(standby, "/readyz")
    status = await _status(standby.url)
    recovery = status["recovery"]
    assert recovery["mode"] == "hot", recovery
    assert recovery["snapshot_id"] == hot["snapshot_id"]
    assert recovery["hot_standby"]["applied"] >= hot["applied"]
    # Only what was committed after the replica's last read is replayed.
    assert recovery["replayed"] < recovery["hot_standby"]["applied"]
    assert "hot_standby" not in status  # handed over, not kept
    assert status["last_seq"] >= recovery["barrier_max_seq"]
