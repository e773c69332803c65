"""Taking snapshots in a forked child, storing them under the epoch fence, and
loading the newest usable one (the store tests run on the real PostgreSQL)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from structlog.testing import capture_logs

from graph_service import recovery, snapshots
from graph_service.gc_policy import freeze_heap
from graph_service.processor import Processor
from graph_service.snapshot_codec import EncodedSnapshot, SnapshotError, decode, encode
from graph_service.snapshots import (
    LoadedSnapshot,
    SnapshotChildFailed,
    SnapshotPreloader,
    SnapshotStore,
    StaleEpoch,
    take_snapshot,
    take_snapshot_in_child,
)
from rca_common import db
from tests.conftest import wait_for
from tests.graph_service.snapshot_helpers import build_processor, event, fingerprint

DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
KEY = b"snapshot-key"

needs_fork = pytest.mark.skipif(not snapshots.FORK_AVAILABLE, reason="no os.fork")


@pytest.fixture(scope="module")
def processor() -> Processor:
    return build_processor()


def restored(state: dict[str, Any], capacity: int) -> Processor:
    p = Processor(recent_capacity=capacity)
    p.import_state(state)
    return p


def open_fds() -> set[int]:
    return (
        {int(n) for n in os.listdir("/proc/self/fd")} if Path("/proc/self/fd").exists() else set()
    )


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        monkeypatch.setattr(snapshots, "log", structlog.get_logger(snapshots.__name__))
        yield captured


# ----------------------------------------------------------- forked snapshots
@needs_fork
async def test_forked_snapshot_equals_in_process_encoding(processor: Processor):
    before = open_fds()
    taken = await take_snapshot_in_child(processor.export_state, KEY)
    inline = encode(processor.export_state(), KEY)
    assert taken.mode == "fork" and taken.child_pid
    assert decode(taken.encoded.blob, KEY, taken.encoded.hmac) == decode(
        inline.blob, KEY, inline.hmac
    )
    assert taken.encoded == inline  # same process image, deterministic pickle: same bytes
    assert 0 < taken.pause_s <= taken.duration_s
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert open_fds() == before  # no descriptor (result file, pidfd) left behind
    with pytest.raises(ChildProcessError):
        os.waitpid(taken.child_pid, os.WNOHANG)  # reaped


@needs_fork
async def test_child_encodes_the_state_as_of_the_fork():
    p = build_processor(instances=40)
    expected = fingerprint(p)
    task = asyncio.create_task(take_snapshot_in_child(p.export_state, None))
    await asyncio.sleep(0)  # the task forks, then waits for the child
    for i in range(30):  # the parent keeps changing the graph meanwhile
        p.process(event("nova.instance", f"late-{i}", 50_000 + i, host="host-1", state="ACTIVE"))
    taken = await task
    copy = restored(decode(taken.encoded.blob, None, None), p.recent.capacity)
    assert fingerprint(copy) == expected
    assert fingerprint(p) != expected


@needs_fork
async def test_child_holds_no_inherited_socket():
    """A parent killed mid-snapshot must free its connections (the leader lock) at once."""
    a, b = socket.socketpair()
    try:

        def state() -> dict[str, Any]:
            try:
                os.fstat(a.fileno())
            except OSError:
                return {"socket_open_in_child": False}
            return {"socket_open_in_child": True}

        taken = await take_snapshot_in_child(state, None)
        assert decode(taken.encoded.blob, None, None) == {"socket_open_in_child": False}
        os.fstat(a.fileno())  # still open in the parent
    finally:
        a.close()
        b.close()


@needs_fork
async def test_child_exception_surfaces_as_snapshot_error():
    def state() -> dict[str, Any]:
        raise RuntimeError("state export exploded")

    with pytest.raises(SnapshotChildFailed, match="state export exploded") as info:
        await take_snapshot_in_child(state, None)
    assert isinstance(info.value, SnapshotError)
    assert gc.get_freeze_count() == 0


@needs_fork
async def test_child_killed_surfaces_as_snapshot_error():
    def state() -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    with pytest.raises(SnapshotChildFailed, match="killed by signal 9"):
        await take_snapshot_in_child(state, None)


@needs_fork
async def test_child_nonzero_exit_surfaces_as_snapshot_error():
    def state() -> dict[str, Any]:
        os._exit(3)

    with pytest.raises(SnapshotChildFailed, match="exited with status 3"):
        await take_snapshot_in_child(state, None)


@needs_fork
async def test_fork_failure_is_a_snapshot_error(monkeypatch: pytest.MonkeyPatch):
    before = open_fds()

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(snapshots.os, "fork", no_fork)
    with pytest.raises(SnapshotError, match="cannot fork"):
        await take_snapshot_in_child(dict, None)
    assert gc.get_freeze_count() == 0
    assert open_fds() == before


@needs_fork
async def test_unpicklable_state_fails_in_the_child():
    with pytest.raises(SnapshotChildFailed, match="pickle"):
        await take_snapshot_in_child(lambda: {"f": lambda: 1}, None)


@needs_fork
async def test_cancelling_kills_and_reaps_the_child(tmp_path: Path):
    pid_file = tmp_path / "child.pid"

    def state() -> dict[str, Any]:
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        return {}

    task = asyncio.create_task(take_snapshot_in_child(state, None))
    await wait_for(pid_file.exists, timeout=10, what="the child to start")
    await wait_for(lambda: pid_file.read_text(), timeout=5, what="the child's pid")
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Gone from /proc means killed *and* reaped (a zombie keeps its entry).
    await wait_for(
        lambda: not Path(f"/proc/{pid}").exists(), timeout=10, what="the child to be reaped"
    )
    assert gc.get_freeze_count() == 0


@needs_fork
def test_forked_snapshot_under_uvloop(processor: Processor):
    import uvloop

    async def run() -> snapshots.TakenSnapshot:
        return await take_snapshot(processor.export_state, KEY)

    taken = uvloop.run(run())
    assert taken.mode == "fork"
    assert decode(taken.encoded.blob, KEY, taken.encoded.hmac) == processor.export_state()


async def test_inline_fallback(processor: Processor):
    taken = await take_snapshot(processor.export_state, KEY, fork=False)
    assert taken.mode == "inline" and taken.child_pid is None
    assert taken.encoded == encode(processor.export_state(), KEY)
    assert taken.pause_s <= taken.duration_s


# ----------------------------------------------------------------- the store
async def new_epoch(conn: asyncpg.Connection, holder: str = "test") -> int:
    return int(
        await conn.fetchval(
            "INSERT INTO leader_epochs (holder) VALUES ($1) RETURNING epoch", holder
        )
    )


def blob_of(n: int, key: bytes | None = KEY) -> EncodedSnapshot:
    return encode({"n": n, "payload": list(range(n))}, key)


async def store_rows(conn: asyncpg.Connection, *seqs: int, key: bytes | None = KEY) -> list[int]:
    epoch = await new_epoch(conn)
    store = SnapshotStore(conn)
    return [await store.insert(blob_of(seq, key), epoch, seq) for seq in seqs]


@pytest.mark.integration
async def test_insert_with_the_newest_epoch(conn: asyncpg.Connection, processor: Processor):
    epoch = await new_epoch(conn)
    enc = encode(processor.export_state(), KEY)
    snapshot_id = await SnapshotStore(conn).insert(enc, epoch, 346)
    row = await conn.fetchrow("SELECT * FROM graph_snapshots WHERE id = $1", snapshot_id)
    assert row["epoch"] == epoch and row["snapshot_seq"] == 346
    assert row["format_version"] == enc.format_version
    assert row["size_bytes"] == enc.size == len(row["blob"])
    assert row["raw_size_bytes"] == enc.raw_size
    assert row["hmac"] == enc.hmac and row["blob"] == enc.blob


@pytest.mark.integration
async def test_insert_with_a_stale_epoch_writes_nothing(conn: asyncpg.Connection):
    old = await new_epoch(conn, "old-leader")
    new = await new_epoch(conn, "new-leader")
    with pytest.raises(StaleEpoch, match=f"epoch {old} refused.*newest leader epoch is {new}"):
        await SnapshotStore(conn).insert(blob_of(1), old, 10)
    assert await conn.fetchval("SELECT count(*) FROM graph_snapshots") == 0


@pytest.mark.integration
async def test_insert_without_any_epoch_is_refused(conn: asyncpg.Connection):
    with pytest.raises(StaleEpoch):
        await SnapshotStore(conn).insert(blob_of(1), 1, 10)
    assert await conn.fetchval("SELECT count(*) FROM graph_snapshots") == 0


@pytest.mark.integration
async def test_epoch_check_waits_for_a_takeover_in_flight(conn: asyncpg.Connection):
    """A new leader's epoch row not yet committed cannot slip past the check."""
    old = await new_epoch(conn, "old-leader")
    other = await db.connect(DSN, await conn.fetchval("SELECT current_schema()"))
    try:
        tx = other.transaction()
        await tx.start()
        await other.fetchval("INSERT INTO leader_epochs (holder) VALUES ('new') RETURNING epoch")
        insert = asyncio.create_task(SnapshotStore(conn).insert(blob_of(1), old, 10))
        await asyncio.sleep(0.3)
        assert not insert.done()  # waiting on the lock, not deciding on a stale view
        await tx.commit()
        with pytest.raises(StaleEpoch):
            await insert
    finally:
        await other.close()
    assert await conn.fetchval("SELECT count(*) FROM graph_snapshots") == 0


@pytest.mark.integration
async def test_candidates_newest_first(conn: asyncpg.Connection):
    ids = await store_rows(conn, 10, 30, 20, 30)
    infos = await SnapshotStore(conn).candidates()
    assert [(i.snapshot_seq, i.id) for i in infos] == [
        (30, ids[3]),
        (30, ids[1]),
        (20, ids[2]),
        (10, ids[0]),
    ]
    assert all(i.signed and i.age_s < 60 and i.size_bytes > 0 for i in infos)
    await conn.execute(
        "UPDATE graph_snapshots SET created_at = now() - interval '1 hour' WHERE id = $1", ids[2]
    )
    assert [i.id for i in await SnapshotStore(conn).candidates(600)] == [ids[3], ids[1], ids[0]]


@pytest.mark.integration
async def test_round_trip_through_the_store(conn: asyncpg.Connection, processor: Processor):
    epoch = await new_epoch(conn)
    store = SnapshotStore(conn)
    taken = await take_snapshot(processor.export_state, KEY)
    snapshot_id = await store.insert(taken.encoded, epoch, 346)
    loaded = await store.load_newest(KEY, max_age_s=600, max_seq=346)
    assert isinstance(loaded, LoadedSnapshot)
    assert (loaded.id, loaded.epoch, loaded.snapshot_seq) == (snapshot_id, epoch, 346)
    assert loaded.size == taken.encoded.size and loaded.raw_size == taken.encoded.raw_size
    assert 0 <= loaded.age_s < 60 and loaded.decode_s > 0
    copy = restored(loaded.state, processor.recent.capacity)
    assert fingerprint(copy) == fingerprint(processor)


@pytest.mark.integration
async def test_load_skips_a_corrupt_newest_snapshot(conn: asyncpg.Connection, logs: list[dict]):
    good, bad = await store_rows(conn, 10, 20)
    await conn.execute(
        "UPDATE graph_snapshots SET blob = overlay(blob placing '\\xdeadbeef'::bytea from 40)"
        " WHERE id = $1",
        bad,
    )
    loaded = await SnapshotStore(conn).load_newest(KEY, max_age_s=600)
    assert loaded is not None and loaded.id == good and loaded.state["n"] == 10
    rejected = [e for e in logs if e["event"] == "snapshot rejected, trying an older one"]
    assert len(rejected) == 1
    assert rejected[0]["snapshot_id"] == bad and rejected[0]["snapshot_seq"] == 20
    assert "HMAC mismatch" in rejected[0]["reason"] and rejected[0]["log_level"] == "warning"
    assert "epoch" in rejected[0]


@pytest.mark.integration
async def test_load_skips_unsigned_truncated_and_mis_sized_snapshots(
    conn: asyncpg.Connection, logs: list[dict]
):
    good, unsigned, truncated = await store_rows(conn, 10, 20, 30)
    await conn.execute("UPDATE graph_snapshots SET hmac = NULL WHERE id = $1", unsigned)
    await conn.execute(
        "UPDATE graph_snapshots SET blob = substring(blob from 1 for 30),"
        " size_bytes = 30 WHERE id = $1",
        truncated,
    )
    loaded = await SnapshotStore(conn).load_newest(None, max_age_s=600)  # no key: no HMAC check
    assert loaded is not None and loaded.id == unsigned
    loaded = await SnapshotStore(conn).load_newest(KEY, max_age_s=600)
    assert loaded is not None and loaded.id == good
    reasons = {e["snapshot_id"]: e["reason"] for e in logs if "reason" in e}
    assert "not signed" in reasons[unsigned]
    assert "HMAC mismatch" in reasons[truncated]
    await conn.execute("UPDATE graph_snapshots SET size_bytes = 1 WHERE id = $1", good)
    assert await SnapshotStore(conn).load_newest(KEY, max_age_s=600) is None
    assert any(e["event"] == "no usable snapshot" for e in logs)
    assert any("the row says 1" in e.get("reason", "") for e in logs)


@pytest.mark.integration
async def test_load_skips_too_old_snapshots(conn: asyncpg.Connection, logs: list[dict]):
    older, newest = await store_rows(conn, 10, 20)
    await conn.execute(
        "UPDATE graph_snapshots SET created_at = now() - interval '2 hours' WHERE id = $1",
        newest,
    )
    loaded = await SnapshotStore(conn).load_newest(KEY, max_age_s=600)
    assert loaded is not None and loaded.id == older
    old = [e for e in logs if e["event"] == "snapshot not used"]
    assert old[0]["snapshot_id"] == newest and "too old" in old[0]["reason"]
    assert old[0]["age_s"] >= 7200
    await conn.execute(
        "UPDATE graph_snapshots SET created_at = now() - interval '20 minutes' WHERE id = $1",
        older,
    )
    assert await SnapshotStore(conn).load_newest(KEY, max_age_s=600) is None
    assert (await SnapshotStore(conn).load_newest(KEY, max_age_s=None)).id == newest  # type: ignore[union-attr]


@pytest.mark.integration
async def test_snapshot_ahead_of_the_log_is_a_loud_error(
    conn: asyncpg.Connection, logs: list[dict]
):
    behind, ahead = await store_rows(conn, 20, 50)
    loaded = await SnapshotStore(conn).load_newest(KEY, max_age_s=600, max_seq=30)
    assert loaded is not None and loaded.id == behind and loaded.snapshot_seq == 20
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    err = errors[0]
    assert err["event"] == "snapshot ahead of the event log"
    assert err["error"] == "ConsistencyError"
    assert err["snapshot_id"] == ahead and err["snapshot_seq"] == 50 and err["max_seq"] == 30
    assert "seqs 31..50 would be reused" in err["message"] and len(err["message"]) > 300
    # A snapshot exactly at the log's end is fine.
    assert (await SnapshotStore(conn).load_newest(KEY, 600, max_seq=50)).id == ahead  # type: ignore[union-attr]


@pytest.mark.integration
async def test_no_snapshot_from_before_a_fresh_start(conn: asyncpg.Connection, logs: list[dict]):
    """A leader that started fresh logged records that rebuild the graph from nothing:
    replaying them onto an older epoch's snapshot would mix two histories."""
    (first,) = await store_rows(conn, 10)  # epoch 1 snapshots at seq 10
    fresh = await new_epoch(conn, "fresh-leader")
    await recovery.record_fresh_start(conn, fresh, 12)  # its barrier timed out, say
    me = await new_epoch(conn, "next-leader")
    assert await recovery.last_fresh_epoch(conn, me) == fresh
    assert await recovery.last_fresh_epoch(conn, fresh) is None
    store = SnapshotStore(conn)
    assert (await store.load_newest(KEY, 600, max_seq=30)).id == first  # type: ignore[union-attr]
    assert await store.load_newest(KEY, 600, max_seq=30, min_epoch=fresh) is None
    skipped = [e for e in logs if e["event"] == "snapshot not used"]
    assert skipped[-1]["snapshot_id"] == first
    assert skipped[-1]["reason"] == f"taken before epoch {fresh} started fresh"
    # A snapshot taken by the fresh leader (or later) is a base again.
    await conn.execute("DELETE FROM leader_epochs WHERE epoch = $1", me)
    ours = await store.insert(blob_of(20), fresh, 20)
    loaded = await store.load_newest(KEY, 600, max_seq=30, min_epoch=fresh)
    assert loaded is not None and loaded.id == ours


@pytest.mark.integration
async def test_load_with_nothing_stored(conn: asyncpg.Connection, logs: list[dict]):
    assert await SnapshotStore(conn).load_newest(KEY, max_age_s=600) is None
    assert logs[-1]["event"] == "no usable snapshot" and logs[-1]["stored"] == 0


@pytest.mark.integration
async def test_store_over_a_pool(conn: asyncpg.Connection):
    schema = await conn.fetchval("SELECT current_schema()")
    epoch = await new_epoch(conn)
    pool = await db.create_pool(DSN, schema, min_size=1, max_size=2)
    try:
        store = SnapshotStore(pool)
        snapshot_id = await store.insert(blob_of(5), epoch, 5)
        loaded = await store.load_newest(KEY, 600, max_seq=5, decode_in_thread=False)
        assert loaded is not None and loaded.id == snapshot_id and loaded.state["n"] == 5
    finally:
        await pool.close()


# ------------------------------------------------------- the standby's preload
@pytest.fixture
async def pool(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(
        DSN, await conn.fetchval("SELECT current_schema()"), min_size=1, max_size=2
    )
    try:
        yield p
    finally:
        await p.close()


@pytest.mark.integration
async def test_preloader_loads_the_newest_snapshot_once(
    conn: asyncpg.Connection, pool: asyncpg.Pool
):
    preloader = SnapshotPreloader(pool, KEY, interval=60)
    assert await preloader.refresh() is None  # nothing stored yet
    [first] = await store_rows(conn, 10)
    loaded = await preloader.refresh()
    assert loaded is not None and loaded.id == first and loaded.state["n"] == 10
    assert await preloader.refresh() is loaded and preloader.loads == 1  # not decoded again
    [newer] = await store_rows(conn, 20)
    assert (await preloader.refresh()).id == newer and preloader.loads == 2  # type: ignore[union-attr]
    assert preloader.take().id == newer and preloader.take() is None  # type: ignore[union-attr]


@pytest.mark.integration
async def test_preloader_refuses_what_a_takeover_refuses(
    conn: asyncpg.Connection, pool: asyncpg.Pool
):
    await store_rows(conn, 10, key=b"another key")
    assert await SnapshotPreloader(pool, KEY, interval=60).refresh() is None


@pytest.mark.integration
async def test_takeover_uses_the_preloaded_copy_when_it_chooses_that_snapshot(
    conn: asyncpg.Connection, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
):
    older, newest = await store_rows(conn, 10, 20)
    preloaded = await SnapshotPreloader(pool, KEY, interval=60).refresh()
    assert preloaded is not None and preloaded.id == newest

    def no_decode(*args: object) -> None:
        raise AssertionError("decoded although preloaded")

    monkeypatch.setattr(snapshots, "_timed_decode", no_decode)
    chosen = await SnapshotStore(conn).load_newest(KEY, 600, max_seq=20, preloaded=preloaded)
    assert chosen is not None and chosen.id == newest and chosen.preloaded
    assert chosen.decode_s == 0 and chosen.state is preloaded.state
    monkeypatch.undo()
    # The log ends before the preloaded snapshot: the takeover's own rules still choose.
    chosen = await SnapshotStore(conn).load_newest(KEY, 600, max_seq=15, preloaded=preloaded)
    assert chosen is not None and chosen.id == older and not chosen.preloaded


@pytest.mark.integration
async def test_preloader_runs_until_stopped(conn: asyncpg.Connection, pool: asyncpg.Pool):
    preloader = SnapshotPreloader(pool, KEY, interval=0.05)
    preloader.start()
    try:
        [snapshot_id] = await store_rows(conn, 7)
        await wait_for(lambda: preloader.loaded is not None, what="the snapshot preloaded")
        assert preloader.loaded.id == snapshot_id  # type: ignore[union-attr]
    finally:
        await asyncio.wait_for(preloader.close(), 5)
    assert preloader._task is not None and preloader._task.done()


@needs_fork
async def test_a_frozen_heap_stays_frozen_after_a_forked_snapshot(processor: Processor):
    """The service keeps its long-lived heap frozen (gc_policy); the snapshot's own freeze
    must not undo that. An unfrozen heap is unfrozen again (the tests above)."""
    freeze_heap("test")
    frozen = gc.get_freeze_count()
    late = [{"x": [i]} for i in range(500)]  # allocated after the freeze: walked until the fork
    taken = await take_snapshot_in_child(processor.export_state, KEY)
    assert taken.mode == "fork"
    assert gc.get_freeze_count() >= frozen + len(late)
    assert not {id(x) for x in late} & {id(o) for o in gc.get_objects()}
