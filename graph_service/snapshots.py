"""Taking, storing and loading snapshots: the I/O edge of :mod:`snapshot_codec`.

Taking one: a forked child (:mod:`forked`) pickles and compresses the state *as it
was at the fork* while the event loop goes on; the loop's pause is the fork itself,
not the seconds that pickling and compressing take.

Storing one checks, in the same transaction, that its epoch is still the newest
in ``leader_epochs`` (a deposed leader must not write). Loading tries the
newest snapshot first and falls back to older ones, logging why each one that
cannot be used was skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from graph_service.forked import FORK_AVAILABLE, ChildRun, ForkError, run_in_child, write_all
from graph_service.gc_policy import freeze_heap
from graph_service.snapshot_codec import (
    FORMAT_VERSION,
    EncodedSnapshot,
    SnapshotError,
    SnapshotRejected,
    decode_payload,
    dump,
    encode,
    seal,
)
from rca_common.logging import get_logger

log = get_logger(__name__)

READ_CHUNK = 8 << 20  # the parent reads the child's result in slices, yielding between them
INSERT_LOCK_TIMEOUT_S = 5.0

_RESULT = struct.Struct(">4sQQH")  # magic, raw size, blob size, hmac size
_RESULT_MAGIC = b"RCAR"

StateFn = Callable[[], dict[str, Any]]


class SnapshotChildFailed(SnapshotError):
    """The forked child did not produce a snapshot (exception, non-zero exit, signal)."""


class StaleEpoch(SnapshotError):
    """The writer's epoch is no longer the newest: it lost leadership and must not write."""

    def __init__(self, epoch: int, newest: int | None) -> None:
        super().__init__(
            f"snapshot of epoch {epoch} refused: the newest leader epoch is {newest}"
            " (this process is no longer the leader)"
        )
        self.epoch = epoch
        self.newest = newest


class ConsistencyError(SnapshotError):
    """A stored snapshot claims a seq beyond the end of the event log."""


@dataclass(frozen=True, slots=True)
class TakenSnapshot:
    encoded: EncodedSnapshot
    mode: str  # "fork" or "inline"
    pause_s: float  # time the event loop was blocked by the snapshot
    duration_s: float  # start to result in hand
    child_pid: int | None = None


# ------------------------------------------------------------------ take one
async def take_snapshot(
    state_fn: StateFn,
    hmac_key: bytes | None,
    *,
    fork: bool = True,
    meta: dict[str, Any] | None = None,
) -> TakenSnapshot:
    """Encode ``state_fn()`` in a forked child when ``fork`` (and the platform allows)."""
    if fork and FORK_AVAILABLE:
        return await take_snapshot_in_child(state_fn, hmac_key, meta=meta)
    return await take_snapshot_inline(state_fn, hmac_key, meta=meta)


async def take_snapshot_inline(
    state_fn: StateFn, hmac_key: bytes | None, *, meta: dict[str, Any] | None = None
) -> TakenSnapshot:
    """The no-fork fallback: pickle on the loop (the consistent point), then compress
    and sign in a worker thread (zlib and hashlib release the GIL)."""
    t0 = time.perf_counter()
    raw = dump(state_fn(), meta)
    pause = time.perf_counter() - t0
    encoded = await asyncio.to_thread(seal, raw, hmac_key)
    return TakenSnapshot(encoded, "inline", pause, time.perf_counter() - t0)


async def take_snapshot_in_child(
    state_fn: StateFn, hmac_key: bytes | None, *, meta: dict[str, Any] | None = None
) -> TakenSnapshot:
    """Fork; the child encodes ``state_fn()`` as of the fork. Raises SnapshotChildFailed.

    ``state_fn`` runs in the child only: it must not touch the event loop.
    Cancelling the await kills the child.
    """
    t0 = time.perf_counter()

    def work(fd: int) -> None:  # pragma: no cover - runs in the forked child
        encoded = encode(state_fn(), hmac_key, meta)
        header = _RESULT.pack(
            _RESULT_MAGIC, encoded.raw_size, encoded.size, len(encoded.hmac or b"")
        )
        write_all(fd, header)
        write_all(fd, encoded.hmac or b"")
        write_all(fd, encoded.blob)

    try:
        run = await run_in_child(work, "snapshot")
    except ForkError as exc:
        raise SnapshotError(str(exc)) from exc
    try:
        encoded = await _read_result(run)
    finally:
        os.close(run.fd)
    return TakenSnapshot(encoded, "fork", run.pause_s, time.perf_counter() - t0, run.pid)


async def _read_result(run: ChildRun) -> EncodedSnapshot:
    fd, pid = run.fd, run.pid
    failure = run.failure("snapshot")
    if failure is not None:
        raise SnapshotChildFailed(failure)
    size = os.fstat(fd).st_size
    head = os.pread(fd, _RESULT.size, 0) if size else b""
    if len(head) < _RESULT.size or head[:4] != _RESULT_MAGIC:
        raise SnapshotChildFailed(f"snapshot child {pid} left no result ({size} bytes written)")
    _, raw_size, blob_size, hmac_size = _RESULT.unpack(head[: _RESULT.size])
    if size != _RESULT.size + hmac_size + blob_size:
        raise SnapshotChildFailed(
            f"snapshot child {pid} left an incomplete result ({size} bytes,"
            f" expected {_RESULT.size + hmac_size + blob_size})"
        )
    if run.status < 0:
        log.warning("snapshot child reaped by someone else; its result is complete", pid=pid)
    offset = _RESULT.size
    signature = os.pread(fd, hmac_size, offset) if hmac_size else None
    offset += hmac_size
    chunks: list[bytes] = []
    end = offset + blob_size
    while offset < end:
        chunk = os.pread(fd, min(READ_CHUNK, end - offset), offset)
        if not chunk:
            raise SnapshotChildFailed(f"snapshot child {pid}: result shorter than announced")
        chunks.append(chunk)
        offset += len(chunk)
        await asyncio.sleep(0)
    blob = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return EncodedSnapshot(blob, raw_size, signature, FORMAT_VERSION)


# ------------------------------------------------------------- store and load
@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A stored snapshot's metadata (everything but the blob)."""

    id: int
    epoch: int
    snapshot_seq: int
    format_version: int
    created_at: datetime
    age_s: float  # by the database's clock
    size_bytes: int
    raw_size_bytes: int
    signed: bool

    def log_fields(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.id,
            "epoch": self.epoch,
            "snapshot_seq": self.snapshot_seq,
            "age_s": round(self.age_s, 3),
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True, slots=True)
class LoadedSnapshot:
    id: int
    epoch: int
    snapshot_seq: int
    created_at: datetime
    age_s: float
    size: int
    raw_size: int
    state: dict[str, Any]
    meta: dict[str, Any]
    decode_s: float
    preloaded: bool = False  # decoded by the standby before the takeover


_INFO_COLUMNS = (
    "id, epoch, snapshot_seq, format_version, created_at, size_bytes, raw_size_bytes,"
    " hmac IS NOT NULL AS signed,"
    " extract(epoch FROM now() - created_at)::float8 AS age_s"
)


class SnapshotStore:
    """``graph_snapshots`` over an asyncpg pool or connection (schema on search_path)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self.db, asyncpg.Pool):
            async with self.db.acquire() as conn:
                yield conn
        else:
            yield self.db

    async def insert(
        self,
        encoded: EncodedSnapshot,
        epoch: int,
        snapshot_seq: int,
        lock_timeout_s: float = INSERT_LOCK_TIMEOUT_S,
    ) -> int:
        """Store a snapshot if ``epoch`` is still the newest leader epoch; returns its id.

        The row goes in first (the slow part, a large blob); then ``leader_epochs``
        is locked in SHARE mode, which waits for and then blocks any new epoch
        row until this transaction ends, and the epoch is checked. A stale epoch
        raises :class:`StaleEpoch` and rolls the insert back.
        """
        async with self._conn() as conn, conn.transaction():
            snapshot_id = await conn.fetchval(
                "INSERT INTO graph_snapshots (epoch, snapshot_seq, format_version,"
                " size_bytes, raw_size_bytes, hmac, blob)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                epoch,
                snapshot_seq,
                encoded.format_version,
                encoded.size,
                encoded.raw_size,
                encoded.hmac,
                encoded.blob,
            )
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            try:
                await conn.execute("LOCK TABLE leader_epochs IN SHARE MODE")
            except asyncpg.LockNotAvailableError:
                raise SnapshotError(
                    f"could not lock leader_epochs within {lock_timeout_s}s to check the epoch"
                ) from None
            newest = await conn.fetchval("SELECT max(epoch) FROM leader_epochs")
            if newest is None or epoch != newest:
                raise StaleEpoch(epoch, newest)
        log.info(
            "snapshot stored",
            snapshot_id=snapshot_id,
            epoch=epoch,
            snapshot_seq=snapshot_seq,
            size_bytes=encoded.size,
            raw_size_bytes=encoded.raw_size,
        )
        return int(snapshot_id)

    async def candidates(self, max_age_s: float | None = None) -> list[SnapshotInfo]:
        """Stored snapshots, newest first (by seq, then id); only those younger than
        ``max_age_s`` (by the database's clock) when it is given."""
        where = ""
        args: list[Any] = []
        if max_age_s is not None:
            where = " WHERE created_at >= now() - make_interval(secs => $1)"
            args.append(float(max_age_s))
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_INFO_COLUMNS} FROM graph_snapshots{where}"
                " ORDER BY snapshot_seq DESC, id DESC",
                *args,
            )
        return [SnapshotInfo(**dict(row)) for row in rows]

    async def load_newest(
        self,
        hmac_key: bytes | None,
        max_age_s: float | None,
        max_seq: int | None = None,
        *,
        decode_in_thread: bool = True,
        preloaded: LoadedSnapshot | None = None,
        min_epoch: int | None = None,
        exclude: int | None = None,
        quiet: bool = False,
    ) -> LoadedSnapshot | None:
        """The newest usable snapshot, or None (the caller then starts fresh).

        Skipped, each with a log line saying why: snapshots older than
        ``max_age_s``, snapshots ahead of the log's end ``max_seq`` (an error:
        see :func:`ahead_of_log_message`), snapshots of an epoch older than
        ``min_epoch`` (the newest leader that started fresh: its records rebuild
        the graph from nothing and cannot be replayed onto an older graph), and
        corrupt, tampered or unreadable ones. ``decode_in_thread`` unpickles in a
        worker thread so that the loop (health checks, the leader watchdog) keeps
        getting time slices. When the
        snapshot chosen is ``preloaded`` (decoded and verified by a standby ahead of
        time, see :class:`SnapshotPreloader`), that copy is used as it is.
        ``exclude``: a snapshot id not to use (a hot standby's replica met a hole
        after it). ``quiet``: skipped snapshots are not logged one by one (a standby
        that waits for a usable one asks again and again).
        """
        infos = await self.candidates()
        skipped: list[str] = []
        for info in infos:
            if info.id == exclude:
                skipped.append(f"{info.id}: excluded")
                continue
            reason = self._unusable(info, max_age_s, max_seq, min_epoch, quiet)
            if reason is None and preloaded is not None and preloaded.id == info.id:
                log.info("snapshot preloaded by the standby: no decode", **info.log_fields())
                return replace(preloaded, age_s=info.age_s, decode_s=0.0, preloaded=True)
            if reason is None:
                loaded = await self._try_load(info, hmac_key, decode_in_thread, skipped)
                if loaded is not None:
                    return loaded
            else:
                skipped.append(f"{info.id}: {reason}")
        if not quiet:
            log.warning(
                "no usable snapshot",
                stored=len(infos),
                skipped=skipped,
                max_age_s=max_age_s,
                max_seq=max_seq,
            )
        return None

    @staticmethod
    def _unusable(
        info: SnapshotInfo,
        max_age_s: float | None,
        max_seq: int | None,
        min_epoch: int | None,
        quiet: bool = False,
    ) -> str | None:
        """Why a snapshot is not even fetched (logged here unless ``quiet``), or None."""
        fields: dict[str, Any] = info.log_fields()
        if min_epoch is not None and info.epoch < min_epoch:
            reason = f"taken before epoch {min_epoch} started fresh"
            level, event = "info", "snapshot not used"
        elif max_age_s is not None and info.age_s > max_age_s:
            reason = f"too old: {info.age_s:.1f}s > SNAPSHOT_INTERVAL {max_age_s:g}s"
            level, event = "info", "snapshot not used"
        elif max_seq is not None and info.snapshot_seq > max_seq:
            reason = f"ahead of the log: seq {info.snapshot_seq} > log end {max_seq}"
            level, event = "error", "snapshot ahead of the event log"
            fields.update(
                error=ConsistencyError.__name__,
                message=ahead_of_log_message(info, max_seq),
                max_seq=max_seq,
            )
        elif info.format_version != FORMAT_VERSION:
            reason = f"format version {info.format_version}, this build reads {FORMAT_VERSION}"
            level, event = "warning", "snapshot not used"
        else:
            return None
        if not quiet:
            if event == "snapshot not used":
                fields["reason"] = reason
            getattr(log, level)(event, **fields)
        return reason

    async def _try_load(
        self, info: SnapshotInfo, hmac_key: bytes | None, in_thread: bool, skipped: list[str]
    ) -> LoadedSnapshot | None:
        fields = info.log_fields()
        try:
            async with self._conn() as conn:
                row = await conn.fetchrow(
                    "SELECT blob, hmac FROM graph_snapshots WHERE id = $1", info.id
                )
        except asyncpg.PostgresError as exc:  # e.g. a damaged TOAST chunk
            reason = f"unreadable row: {type(exc).__name__}: {exc}"
            log.warning("snapshot rejected, trying an older one", reason=reason, **fields)
            skipped.append(f"{info.id}: {reason}")
            return None
        if row is None:
            reason = "deleted while loading (pruned)"
            log.info("snapshot not used", reason=reason, **fields)
            skipped.append(f"{info.id}: {reason}")
            return None
        blob, signature = row["blob"], row["hmac"]
        try:
            if len(blob) != info.size_bytes:
                raise SnapshotRejected(f"blob is {len(blob)} bytes, the row says {info.size_bytes}")
            if in_thread:
                payload, decode_s = await asyncio.to_thread(
                    _timed_decode, blob, hmac_key, signature
                )
            else:
                payload, decode_s = _timed_decode(blob, hmac_key, signature)
        except SnapshotRejected as exc:
            log.warning("snapshot rejected, trying an older one", reason=exc.reason, **fields)
            skipped.append(f"{info.id}: {exc.reason}")
            return None
        if hmac_key is None and signature is not None:
            log.warning("snapshot is signed but SNAPSHOT_HMAC_KEY is unset: not verified", **fields)
        log.info("snapshot loaded", decode_s=round(decode_s, 3), **fields)
        return LoadedSnapshot(
            id=info.id,
            epoch=info.epoch,
            snapshot_seq=info.snapshot_seq,
            created_at=info.created_at,
            age_s=info.age_s,
            size=info.size_bytes,
            raw_size=info.raw_size_bytes,
            state=payload["state"],
            meta=payload["meta"],
            decode_s=decode_s,
        )


class SnapshotPreloader:
    """A standby's copy of the newest snapshot, decoded before it is needed.

    Loading a 100k-vertex snapshot (fetch, verify, inflate, unpickle) is about half
    of a takeover's time, and the snapshot a takeover will choose is nearly always
    the newest one stored, which exists long before the active dies. The standby
    checks every ``interval`` seconds and loads a newer one when there is one, with
    the same checks as a takeover (signature, allow-listed unpickling). A takeover
    still chooses its snapshot itself (barrier, age, log end) and uses this copy
    only if it chose the same one. The copy is handed over once: the new graph is
    built from it and the preloader is stopped.
    """

    STATUS_KEY = "standby_preload"  # in /status while standing by

    def __init__(self, pool: asyncpg.Pool, hmac_key: bytes | None, interval: float) -> None:
        self.pool = pool
        self.hmac_key = hmac_key
        self.interval = interval
        self.loaded: LoadedSnapshot | None = None
        self.loads = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Until :meth:`stop`: a load in progress is finished, not thrown away (the
        takeover that stops us is about to need it)."""
        while not self._stop.is_set():
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("standby: snapshot preload failed, will retry", error=repr(exc))
            with contextlib.suppress(TimeoutError):  # a poll: snapshots are rare, it is cheap
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="standby-snapshot-preload")

    def stop(self) -> None:
        self._stop.set()

    async def close(self, for_takeover: bool = True) -> None:
        """Stop, after the load in progress if any (see :meth:`run`); a shutdown
        (``for_takeover=False``) does not wait for it."""
        self.stop()
        if self._task is not None:
            if not for_takeover:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> LoadedSnapshot | None:
        """Load the newest stored snapshot unless it is the one already held."""
        async with self.pool.acquire() as conn:
            store = SnapshotStore(conn)
            infos = [i for i in await store.candidates() if i.format_version == FORMAT_VERSION]
            if not infos or (self.loaded is not None and self.loaded.id == infos[0].id):
                return self.loaded
            skipped: list[str] = []
            loaded = await store._try_load(infos[0], self.hmac_key, True, skipped)
        if loaded is not None:
            self.loaded = loaded
            self.loads += 1
            freeze_heap("standby: snapshot preloaded")
            log.info("standby: snapshot preloaded", **infos[0].log_fields())
        return self.loaded

    def status(self) -> dict[str, Any]:
        held = self.loaded
        return {"snapshot_id": held.id if held else None, "loads": self.loads}

    def take(self) -> LoadedSnapshot | None:
        """The copy, for one takeover (not kept: the graph built from it will change)."""
        loaded, self.loaded = self.loaded, None
        return loaded


def _timed_decode(
    blob: bytes, hmac_key: bytes | None, signature: bytes | None
) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    payload = decode_payload(blob, hmac_key, signature)
    return payload, time.perf_counter() - t0


def ahead_of_log_message(info: SnapshotInfo, max_seq: int) -> str:
    return (
        f"Snapshot {info.id} (epoch {info.epoch}) holds the graph after seq"
        f" {info.snapshot_seq}, but the event log ends at seq {max_seq}. A snapshot"
        " can never be ahead of the log it was taken from: the events up to its seq"
        " were processed by a leader but never reached the log, or the events table"
        " was truncated or restored from an older backup, or DB_SCHEMA points at"
        " another deployment's snapshots. Loading it would serve a graph that replay"
        f" cannot reproduce, and seqs {max_seq + 1}..{info.snapshot_seq} would be"
        " reused for different events. It is skipped and an older snapshot is tried;"
        " check the persistor's logs and the events table, and delete this row once"
        " the cause is understood."
    )


__all__ = [
    "FORK_AVAILABLE",
    "ConsistencyError",
    "LoadedSnapshot",
    "SnapshotChildFailed",
    "SnapshotInfo",
    "SnapshotPreloader",
    "SnapshotStore",
    "StaleEpoch",
    "TakenSnapshot",
    "ahead_of_log_message",
    "take_snapshot",
    "take_snapshot_in_child",
    "take_snapshot_inline",
]
