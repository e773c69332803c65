"""PostgreSQL goes away mid-stream (a cut TCP proxy): nothing is acked, nothing is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from rca_common.settings import Settings
from tests.conftest import wait_for
from tests.persistor_service.conftest import Stream, recs, rows, sample
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_database_outage_is_retried_and_nothing_is_acked_meanwhile(
    pg_proxy: TcpProxy,
    start_persistor,
    stream: Stream,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/postgres"
    persistor = await start_persistor(database_url=dsn)
    await stream.publish(recs(1, 100))
    await persistor.wait_until(lambda: persistor.state.last_seq == 100, timeout=30)

    await pg_proxy.cut()
    await stream.publish(recs(101, 150), recs(151, 200))
    await wait_for(lambda: sample(persistor, "db_errors") >= 3, timeout=30, what="retries")
    assert not persistor.healthy()
    assert persistor.state.last_seq == 100
    assert await db.fetchval("SELECT max(seq) FROM events") == 100

    await pg_proxy.start()
    await persistor.wait_until(lambda: persistor.state.last_seq == 200, timeout=30)
    assert [r["seq"] for r in await rows(db)] == list(range(1, 201))
    assert persistor.healthy()
    await persistor.stop()
    assert await stream.ready(settings.persistor_queue) == 0


async def test_broker_connection_cut_redelivers_and_nothing_is_written_twice(
    start_persistor, stream: Stream, db: asyncpg.Connection, settings: Settings
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    try:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.2"
        persistor = await start_persistor(amqp_url=url)
        await stream.publish(*(recs(s, s + 99) for s in range(1, 1000, 100)))
        await persistor.wait_until(lambda: persistor.state.last_seq >= 300, timeout=30)
        await proxy.cut()  # mid-stream: deliveries in hand become stale
        await stream.publish(*(recs(s, s + 99) for s in range(1001, 2000, 100)))
        await proxy.start()
        await persistor.wait_until(lambda: persistor.state.last_seq == 2000, timeout=30)
        await wait_for(persistor.healthy, what="healthy again")
        await persistor.stop()
    finally:
        await proxy.close()
    stats = await db.fetchrow("SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM events")
    assert dict(stats) == {"n": 2000, "lo": 1, "hi": 2000}
    assert await stream.ready(settings.persistor_queue) == 0
    assert sample(persistor, "gaps") == 0
