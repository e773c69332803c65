"""The log publisher against the real broker: batching by records and by weight."""

from __future__ import annotations

import aio_pika
import pytest

from graph_service import log_publisher
from graph_service.log_publisher import AmqpLogSink
from rca_common.broker import BrokerTopology, declare_topology
from rca_common.records import CONTENT_TYPE, LogRecord, decode_records
from tests.conftest import settings_from, wait_for


def record(seq: int, changes: int = 1, steps: int = 0) -> LogRecord:
    payload = {"steps": [{"op": "activate"}] * steps} if steps else {"state": "UP"}
    event = {"event_id": f"e{seq}", "entity_type": "x", "payload": payload}
    return LogRecord(seq, 1, 0.0, event, [["v", f"v{i}", {}, []] for i in range(changes)])


@pytest.mark.integration
async def test_batches_are_cut_by_weight_as_well_as_by_count(
    broker: aio_pika.abc.AbstractChannel,
    test_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_publisher, "MAX_BATCH_WEIGHT", 100)
    topology = BrokerTopology.from_settings(settings_from(test_env))
    await broker.set_qos(prefetch_count=100)
    declared = await declare_topology(broker, topology)
    confirmed: list[int] = []
    sink = AmqpLogSink(
        declared.processed_exchange,
        on_confirm=confirmed.append,
        on_failure=lambda exc: pytest.fail(repr(exc)),
        batch_max=500,
        batch_delay=60,  # only the limits cut a batch here; flush() ends the last one
    )
    heavy = [record(seq, changes=40) for seq in range(1, 7)]  # 41 each: 3 per 100
    light = [record(seq) for seq in range(7, 17)]  # 2 each
    for r in (*heavy, *light):
        sink.append(r.seq, r.epoch, r.processed_at, r.event, r.changes)
    await sink.flush()
    assert confirmed and confirmed[-1] == 16

    bodies: list[bytes] = []
    queue = declared.queues[topology.persistor_queue.name]

    async def take() -> bool:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            assert message.content_type == CONTENT_TYPE  # framed, not JSON
            bodies.append(message.body)
        return sum(len(decode_records(b)) for b in bodies) == 16

    await wait_for(take, what="every record on the persistor queue")
    sizes = [[r.seq for r in decode_records(b)] for b in bodies]
    assert sizes == [[1, 2, 3], [4, 5, 6], list(range(7, 17))]
    assert [len(r.changes) for r in decode_records(bodies[0])] == [40, 40, 40]
