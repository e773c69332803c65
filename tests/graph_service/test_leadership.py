"""One writer (invariant 4): the advisory lock, epochs, and self-fencing."""

from __future__ import annotations

import asyncio
import time

import pytest

from graph_service.leadership import Leadership
from rca_common import db
from rca_common.settings import Settings
from tests.conftest import drop_test_schema, settings_from
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(test_env: dict[str, str]):  # type: ignore[no-untyped-def]
    yield settings_from({**test_env, "LEADER_FENCE_TIMEOUT": "1.0",
                         "LEADER_CHECK_INTERVAL": "0.1"})  # fmt: skip
    await drop_test_schema(test_env)


def _via(settings: Settings, proxy: TcpProxy) -> Settings:
    url = settings.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    return settings.model_copy(update={"database_url": url})


async def test_second_instance_waits_until_the_first_lets_go(settings: Settings) -> None:
    lost: list[str] = []
    first = Leadership(settings, on_lost=lost.append)
    await first.wait_for_lock()
    assert await first.open_epoch() == 1
    second = Leadership(settings, on_lost=lost.append)
    waiting = asyncio.create_task(second.wait_for_lock())
    done, _ = await asyncio.wait([waiting], timeout=1.0)
    assert not done, "a second leader got the lock while the first held it"
    await first.release()
    await asyncio.wait_for(waiting, 10)
    assert await second.open_epoch() == 2
    await second.release()
    assert lost == []


async def test_epochs_are_recorded_with_their_holder(settings: Settings) -> None:
    leader = Leadership(settings, on_lost=lambda _: None)
    await leader.wait_for_lock()
    epoch = await leader.open_epoch()
    await leader.release()
    conn = await db.connect(settings.database_url, settings.db_schema)
    try:
        row = await conn.fetchrow("SELECT epoch, holder FROM leader_epochs")
    finally:
        await conn.close()
    assert (row["epoch"], row["holder"]) == (epoch, leader.holder)


async def test_active_fences_itself_before_a_standby_can_take_the_lock(
    settings: Settings,
) -> None:
    """The lock connection goes silent: the active stops within F, the standby later."""
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    fenced = asyncio.Event()
    fenced_at: list[float] = []

    def on_lost(reason: str) -> None:
        fenced_at.append(time.monotonic())
        fenced.set()

    active = Leadership(_via(settings, proxy), on_lost=on_lost)
    await active.wait_for_lock()
    await active.open_epoch()
    standby = Leadership(settings, on_lost=lambda _: None)
    waiting = asyncio.create_task(standby.wait_for_lock())

    cut_at = time.monotonic()
    proxy.freeze()
    await asyncio.wait_for(fenced.wait(), settings.leader_fence_timeout + 2)
    assert fenced_at[0] - cut_at <= settings.leader_fence_timeout + 0.5
    assert not waiting.done(), "the standby got the lock before the active had fenced itself"
    await proxy.close()  # the dead host's connection finally drops on the server side
    await asyncio.wait_for(waiting, 15)
    await standby.release()
    await active.release()


async def test_lock_connection_has_short_server_side_timeouts(settings: Settings) -> None:
    leader = Leadership(settings, on_lost=lambda _: None)
    await leader.wait_for_lock()
    assert leader._conn is not None
    values = {
        name: await leader._conn.fetchval(f"SHOW {name}")
        for name in ("tcp_keepalives_idle", "tcp_keepalives_count", "tcp_user_timeout")
    }
    await leader.release()
    assert values == {
        "tcp_keepalives_idle": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "5000",  # milliseconds
    }


async def test_a_busy_event_loop_is_not_mistaken_for_a_lost_lock(settings: Settings) -> None:
    """A long synchronous pass stalls the loop past F; the connection is fine, so the
    next check succeeds and nothing is fenced (the kernel kept the TCP session alive)."""
    lost: list[str] = []
    leader = Leadership(settings, on_lost=lost.append)
    await leader.wait_for_lock()
    await leader.open_epoch()
    stalled_at = time.monotonic()
    time.sleep(settings.leader_fence_timeout * 1.5)  # the stall under test: a blocked loop
    deadline = time.monotonic() + 10
    while (leader.last_ok or 0) <= stalled_at and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (leader.last_ok or 0) > stalled_at, "no check succeeded after the stall"
    assert lost == []
    await leader.release()
