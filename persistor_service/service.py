"""The persistor: drains the processed-event queue into the ``events`` log.

Start order: HTTP (healthz answers 503 until both connections are up) →
PostgreSQL (migrate, load the fence and the log's tail; retried with backoff)
→ RabbitMQ (declare the whole topology, consume) → the two writer stages, the
pruner and the progress loop.

Two stages, so that parsing the next batch overlaps the database round trip of
the current one (about twice the throughput on two cores):

* *prepare* takes the first waiting message, then whatever else is already
  waiting, up to ``PERSISTOR_BATCH_MAX`` records; it validates them
  (dead-lettering malformed messages) and plans the batch;
* *commit* writes the batch in one transaction, puts fenced zombie events back
  on the collector queue, and only then acks the batch's last message with
  ``multiple=True``. A crash anywhere redelivers; the upsert is idempotent.

Stop is two-stage: cancel the consumer and both stages, let the batch in flight
finish (bounded by ``SHUTDOWN_TIMEOUT``; it runs shielded from the stage's
cancellation), then close. Whatever was not acked is redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from aiohttp import web

from persistor_service.http_api import create_app
from persistor_service.metrics import PersistorMetrics
from persistor_service.parsing import MalformedRecords, parse_message
from persistor_service.plan import BatchPlan, Discontinuity, LogState, plan_batch
from persistor_service.pruner import PruneResult, prune
from persistor_service.store import LogStore, WriteResult
from rca_common.broker import BrokerTopology, dead_letter, declare_topology
from rca_common.db import connect
from rca_common.logging import get_logger
from rca_common.records import LogRecord
from rca_common.settings import Settings

log = get_logger(__name__)

PROGRESS_INTERVAL = 5.0  # seconds between progress lines (only while busy) and DB pings
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
REQUEUE_CHUNK = 500  # events per message put back on the collector queue

# Connection-level failures: expected while a server restarts, logged without a traceback.
TRANSIENT_DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


class Phase(StrEnum):
    STARTING = "starting"  # connecting to PostgreSQL and RabbitMQ
    RUNNING = "running"  # consuming and writing
    STOPPING = "stopping"  # two-stage shutdown
    STOPPED = "stopped"


@dataclass(slots=True)
class Batch:
    messages: list[AbstractIncomingMessage] = field(default_factory=list)
    records: list[LogRecord] = field(default_factory=list)
    plan: BatchPlan | None = None  # None: no records (only malformed or empty messages)


def backoff(attempt: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1))


def _log_failure(what: str, exc: BaseException, **facts: Any) -> None:
    if isinstance(exc, TRANSIENT_DB_ERRORS):
        log.warning(what, error=repr(exc), **facts)
    else:
        log.error(what, exc_info=exc, **facts)


def _is_stale(message: AbstractIncomingMessage) -> bool:
    """Delivered on a channel that has since closed: the broker redelivers it."""
    try:
        message.channel  # noqa: B018 - the property raises when the channel is gone
    except ChannelInvalidStateError:
        return True
    return False


class PersistorService:
    """One persistor. In-process use: ``await start()`` … ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = BrokerTopology.from_settings(settings)
        self.metrics = PersistorMetrics()
        self.store = LogStore(settings.database_url, settings.db_schema)
        self.state = LogState()
        self.phase = Phase.STARTING
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.http_port: int | None = None
        self.records_written = 0
        self.zombies_fenced = 0
        self.finishing_inflight = False  # stage two of stop: only the batch in flight runs
        self.lag_s = 0.0  # wall clock minus processed_at of the last record written
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._carry: tuple[AbstractIncomingMessage, list[LogRecord]] | None = None
        self._planned = LogState()  # the state after the last batch prepared
        self._prepared: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._workers: list[asyncio.Task[None]] = []
        self._inflight: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._committed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ views
    def healthy(self) -> bool:
        amqp = self._connection is not None and self._connection.connected.is_set()
        return self.phase is Phase.RUNNING and amqp and self.store.connected

    def status(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "current_epoch": self.state.current_epoch,
            "last_seq": self.state.last_seq,
            "last_epoch": self.state.last_epoch,
            "records_written": self.records_written,
            "zombies_fenced": self.zombies_fenced,
            "inbox": self._inbox.qsize(),
            "amqp_connected": self._connection is not None and self._connection.connected.is_set(),
            "db_connected": self.store.connected,
        }

    @property
    def busy(self) -> bool:
        """A batch is being written (or retried)."""
        return self._inflight is not None and not self._inflight.done()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait (bounded) until ``predicate()`` holds after some batch commits."""
        async with self._committed:
            await asyncio.wait_for(self._committed.wait_for(predicate), timeout)

    # ------------------------------------------------------------------ start
    async def run(self) -> int:
        """For the entry point: start, serve until ``stopped`` is set, stop."""
        starting = asyncio.create_task(self.start(), name="persistor-start")
        stop_wait = asyncio.create_task(self.stopped.wait(), name="persistor-stop-wait")
        try:
            await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                await stop_wait
        except Exception:
            log.exception("persistor failed")
            self.exit_code = 1
        finally:
            for task in (starting, stop_wait):
                task.cancel()
            await asyncio.gather(starting, stop_wait, return_exceptions=True)
            await self.stop()
        return self.exit_code

    async def start(self) -> None:
        s = self.settings
        log.info(
            "starting",
            amqp=s.masked_amqp_url(),
            database=s.masked_database_url(),
            schema=s.db_schema,
            queue=s.persistor_queue,
            batch_max=s.persistor_batch_max,
        )
        await self._start_http()
        self.state = await self._retry("postgres unreachable", self.store.load_state)
        self._publish_gauges()
        log.info("log state loaded", **self._state_facts())
        self._connection = await self._retry(
            "rabbitmq unreachable", lambda: aio_pika.connect_robust(s.amqp_url)
        )
        consume_channel = await self._connection.channel()
        await consume_channel.set_qos(prefetch_count=s.persistor_prefetch)
        declared = await declare_topology(consume_channel, self.topology)
        self._queue = declared.queues[self.topology.persistor_queue.name]
        self._publish_channel = await self._connection.channel(on_return_raises=True)
        self._planned = self.state
        self._workers = [
            asyncio.create_task(self._guard(self._prepare_loop()), name="persistor-prepare"),
            asyncio.create_task(self._guard(self._commit_loop()), name="persistor-commit"),
        ]
        self._consumer_tag = await self._queue.consume(self._on_message)
        self._spawn(self._prune_loop(), "persistor-prune")
        self._spawn(self._progress_loop(), "persistor-progress")
        self.phase = Phase.RUNNING
        log.info("running", queue=self._queue.name, prefetch=s.persistor_prefetch)

    async def _start_http(self) -> None:
        if not self.settings.persistor_http_port:
            return
        self._runner = web.AppRunner(create_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.persistor_http_port)
        await site.start()
        self.http_port = self.settings.persistor_http_port
        log.info("http listening", host=self.settings.http_host, port=self.http_port)

    async def _retry(self, what: str, attempt_once: Callable[[], Awaitable[Any]]) -> Any:
        """Call until it succeeds, with exponential backoff and a log line each time."""
        attempt = 0
        while True:
            try:
                return await attempt_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                delay = backoff(attempt)
                _log_failure(f"{what}; retrying", exc, attempt=attempt, retry_in_s=delay)
                await asyncio.sleep(delay)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --------------------------------------------------------------- consuming
    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)  # bounded by the prefetch

    async def _next_batch(self) -> Batch:
        """The first waiting message, then what is already waiting, up to the limit."""
        batch = Batch()
        limit = self.settings.persistor_batch_max
        while True:
            if self._carry is not None:
                message, records = self._carry
                self._carry = None
            else:
                if not batch.messages:
                    message = await self._inbox.get()
                else:
                    try:
                        message = self._inbox.get_nowait()
                    except asyncio.QueueEmpty:
                        return batch
                if _is_stale(message):
                    continue
                records = await self._parse(message)
            if batch.records and len(batch.records) + len(records) > limit:
                self._carry = (message, records)
                return batch
            batch.messages.append(message)
            batch.records.extend(records)
            if len(batch.records) >= limit:
                return batch

    async def _parse(self, message: AbstractIncomingMessage) -> list[LogRecord]:
        """The message's records; a malformed message is dead-lettered and yields none."""
        try:
            return parse_message(message.body)
        except MalformedRecords as exc:
            reason = exc.reason
        log.warning("malformed message dead-lettered", reason=reason)
        assert self._publish_channel is not None
        channel, source = self._publish_channel, self.topology.persistor_queue.name
        await self._retry(
            "dead-letter publish failed",
            lambda: dead_letter(channel, self.topology, message.body, reason, source),
        )
        self.metrics.dead_lettered.inc()
        return []

    # ----------------------------------------------------------------- writing
    async def _guard(self, loop: Awaitable[None]) -> None:
        """A stage that fails stops the service: better a restart than a stuck log."""
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("persistor stage failed; stopping (nothing uncommitted was acked)")
            self.exit_code = 1
            self.stopped.set()

    async def _prepare_loop(self) -> None:
        """Parse and plan the next batch while the previous one is being committed.

        Planning from the state the previous *planned* batch leads to is safe:
        a batch is retried until it commits (or the service stops), so that
        state is the one the log will have.
        """
        while True:
            batch = await self._next_batch()
            if batch.records:
                batch.plan = plan_batch(self._planned, batch.records)
                self._planned = batch.plan.state
            await self._prepared.put(batch)

    async def _commit_loop(self) -> None:
        while True:
            batch = await self._prepared.get()
            self._inflight = asyncio.create_task(self._commit(batch), name="persistor-batch")
            await asyncio.shield(self._inflight)  # stop() decides how long it may take

    async def _commit(self, batch: Batch) -> None:
        """Write, requeue zombie events, then ack: in that order (invariants 2 and 4)."""
        plan = batch.plan
        if plan is not None:
            started = time.perf_counter()
            result: WriteResult = await self._retry(
                "batch write failed, nothing acked", lambda: self._write(plan)
            )
            self._committed_batch(plan, result, len(batch.records), time.perf_counter() - started)
            if result.zombies:
                await self._requeue(result.zombies)
        if batch.messages:
            await self._ack(batch.messages[-1])
        async with self._committed:
            self._committed.notify_all()

    async def _write(self, plan: BatchPlan) -> WriteResult:
        try:
            return await self.store.write(plan)
        except Exception:
            self.metrics.db_errors.inc()
            raise

    async def _requeue(self, zombies: list[LogRecord]) -> None:
        """Put fenced records' input events back on the collector queue (confirmed).

        Evaluator actions (entity type ``vitrage``) are not put back: they were
        the zombie's decisions; the active's evaluator makes its own.
        """
        seen: set[str] = set()
        events = []
        for record in zombies:
            event = record.input_event()
            if event.get("entity_type") == "vitrage":
                continue
            event_id = event["event_id"]
            if event_id not in seen:
                seen.add(event_id)
                events.append(event)
        assert self._publish_channel is not None
        exchange = self._publish_channel.default_exchange
        for i in range(0, len(events), REQUEUE_CHUNK):
            message = aio_pika.Message(
                orjson.dumps(events[i : i + REQUEUE_CHUNK]),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await self._retry(
                "requeue of fenced events failed, nothing acked",
                lambda m=message: exchange.publish(m, routing_key=self.topology.events_queue.name),
            )
        log.info(
            "fenced events requeued", events=len(events), queue=self.topology.events_queue.name
        )

    async def _ack(self, last: AbstractIncomingMessage) -> None:
        try:
            await last.ack(multiple=True)
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning(
                "ack failed after commit; the broker redelivers and the upsert is idempotent",
                error=repr(exc),
            )

    def _committed_batch(
        self, plan: BatchPlan, result: WriteResult, records: int, seconds: float
    ) -> None:
        """Adopt the new state and account for the batch: runs only after COMMIT."""
        self.state = plan.state
        self.records_written += plan.rows
        m = self.metrics
        m.batches.inc()
        m.records_written.inc(plan.rows)
        m.batch_latency.observe(seconds)
        m.batch_records.observe(records)
        m.redeliveries.inc(plan.redeliveries + result.already_logged)
        self._publish_gauges()
        if plan.last_processed_at is not None:
            self.lag_s = max(0.0, time.time() - plan.last_processed_at)
            m.lag.set(self.lag_s)
        for old, new, seq in plan.epoch_raises:
            level = log.warning if old else log.info  # from 0: the first epoch ever seen
            level("newer epoch without a barrier: fence raised", epoch=new, previous=old, seq=seq)
        for jump in plan.jumps:
            m.gaps.inc()
            what = "seq gap in the log" if jump.kind is Discontinuity.GAP else "seq went backwards"
            log.error(
                what,
                kind=jump.kind.value,
                expected_seq=jump.expected,
                actual_seq=jump.actual,
                epoch=jump.epoch,
                previous_epoch=jump.previous_epoch,
            )
        for barrier in result.barriers:
            m.barriers.inc()
            log.info(
                "barrier committed", epoch=barrier.epoch, max_seq=barrier.max_seq, new=barrier.new
            )
        for epoch in plan.stale_barriers:
            log.warning("barrier of a superseded epoch", epoch=epoch, **self._state_facts())
        self._account_zombies(result.zombies)

    def _account_zombies(self, zombies: list[LogRecord]) -> None:
        self.zombies_fenced += len(zombies)
        self.metrics.zombies.inc(len(zombies))
        by_epoch: dict[int, list[int]] = {}
        for record in zombies:
            by_epoch.setdefault(record.epoch, []).append(record.seq)
        for epoch, seqs in by_epoch.items():
            log.warning(
                "zombie records fenced",
                epoch=epoch,
                current_epoch=self.state.current_epoch,
                count=len(seqs),
                seq=seqs[0],
                last_seq=seqs[-1],
            )

    def _publish_gauges(self) -> None:
        self.metrics.last_seq.set(self.state.last_seq)
        self.metrics.current_epoch.set(self.state.current_epoch)

    def _state_facts(self) -> dict[str, int]:
        s = self.state
        return {
            "current_epoch": s.current_epoch,
            "last_seq": s.last_seq,
            "last_epoch": s.last_epoch,
        }

    # ------------------------------------------------------- background loops
    async def prune_now(self) -> PruneResult | None:
        """One prune on its own connection; None (and an error log) when it failed."""
        try:
            conn = await connect(self.settings.database_url, self.settings.db_schema, timeout=10)
            try:
                result = await prune(
                    conn, self.settings.snapshots_kept, events=self.settings.prune_events
                )
            finally:
                await conn.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log_failure("prune failed; retrying at the next interval", exc)
            return None
        self.metrics.pruned_events.inc(result.events_deleted)
        self.metrics.pruned_snapshots.inc(result.snapshots_deleted)
        if result.horizon is None:
            log.debug("prune: no snapshots yet")
        else:
            log.info(
                "pruned",
                snapshots_deleted=result.snapshots_deleted,
                events_deleted=result.events_deleted,
                horizon_seq=result.horizon,
                snapshots_kept=self.settings.snapshots_kept,
            )
        return result

    async def _prune_loop(self) -> None:
        while True:
            await self.prune_now()
            await asyncio.sleep(self.settings.prune_interval)

    async def _progress_loop(self) -> None:
        """Progress lines while busy (catch-up rate, lag), and a DB ping while idle."""
        last_count, last_t = self.records_written, time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            depth = await self._sample_depth()
            now, count = time.monotonic(), self.records_written
            if count != last_count or depth:
                log.info(
                    "progress",
                    records_per_s=round((count - last_count) / (now - last_t)),
                    queued_messages=depth,
                    inbox=self._inbox.qsize(),
                    lag_s=round(self.lag_s, 3),
                    **self._state_facts(),
                )
            elif self._inflight is None or self._inflight.done():
                await self._ping_db()
            last_count, last_t = count, now

    async def _sample_depth(self) -> int:
        if self._queue is None:
            return 0
        try:
            declared = await self._queue.declare(timeout=5)
        except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
            log.debug("queue depth unavailable", error=repr(exc))
            return 0
        depth = declared.message_count or 0
        self.metrics.queue_depth.set(depth)
        return depth

    async def _ping_db(self) -> None:
        """Keep healthz honest while idle; reconnects if the server came back."""
        try:
            await self.store.ping()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log_failure("postgres ping failed", exc)

    # ------------------------------------------------------------------- stop
    async def stop(self) -> None:
        """Two-stage shutdown: stop taking work, finish the batch in flight (bounded), close."""
        if self.phase in (Phase.STOPPING, Phase.STOPPED):
            return
        self.phase = Phase.STOPPING
        self.stopped.set()
        log.info("stopping", inbox=self._inbox.qsize(), **self._state_facts())
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(
                AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError
            ):
                await asyncio.wait_for(self._queue.cancel(self._consumer_tag), 5)
        background = [*self._tasks, *self._workers]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._finish_inflight()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._connection is not None:
            await self._connection.close()  # unacked deliveries go back to the queue
        await self.store.close()
        self.phase = Phase.STOPPED
        log.info("stopped", records_written=self.records_written, **self._state_facts())

    async def _finish_inflight(self) -> None:
        inflight = self._inflight
        if inflight is None or inflight.done():
            return
        timeout = self.settings.shutdown_timeout
        self.finishing_inflight = True
        log.info("stopping: waiting for the batch in flight", timeout_s=timeout)
        try:
            await asyncio.wait_for(asyncio.shield(inflight), timeout)
        except TimeoutError:
            log.warning(
                "shutdown: batch not committed in time; it will be redelivered", timeout_s=timeout
            )
            inflight.cancel()
            await asyncio.gather(inflight, return_exceptions=True)
        except Exception:
            log.exception("shutdown: the batch in flight failed; it will be redelivered")
