"""Prometheus metrics of one persistor (own registry: tests run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()


class PersistorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_written = Counter(
            "rca_persistor_records_written_total",
            "Event records written to the log (redeliveries included: the upsert is idempotent).",
            registry=r,
        )
        self.batches = Counter(
            "rca_persistor_batches_total", "Transactions committed (one per batch).", registry=r
        )
        self.zombies = Counter(
            "rca_persistor_zombies_fenced_total",
            "Records of a superseded epoch kept out of the log; their events were requeued.",
            registry=r,
        )
        self.gaps = Counter(
            "rca_persistor_seq_gaps_total",
            "Written records whose seq was not the last one + 1 (gap or restart).",
            registry=r,
        )
        self.redeliveries = Counter(
            "rca_persistor_redelivered_records_total",
            "Records seen again (redelivery after a crash or reconnect).",
            registry=r,
        )
        self.barriers = Counter(
            "rca_persistor_barriers_total", "Barriers committed and announced.", registry=r
        )
        self.dead_lettered = Counter(
            "rca_persistor_dead_lettered_total",
            "Malformed messages sent to the dead-letter queue.",
            registry=r,
        )
        self.db_errors = Counter(
            "rca_persistor_db_errors_total",
            "Failed batch transactions (each is retried with backoff).",
            registry=r,
        )
        self.pruned_events = Counter(
            "rca_persistor_pruned_events_total", "Events deleted by pruning.", registry=r
        )
        self.pruned_snapshots = Counter(
            "rca_persistor_pruned_snapshots_total", "Snapshots deleted by pruning.", registry=r
        )
        self.batch_latency = Histogram(
            "rca_persistor_batch_seconds",
            "Time to write and commit one batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.batch_records = Histogram(
            "rca_persistor_batch_records",
            "Records per batch.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.last_seq = Gauge(
            "rca_persistor_last_seq", "Seq of the last event record written.", registry=r
        )
        self.current_epoch = Gauge(
            "rca_persistor_current_epoch",
            "The fence: records of older epochs are fenced.",
            registry=r,
        )
        self.lag = Gauge(
            "rca_persistor_lag_seconds",
            "Wall clock minus processed_at of the last record written.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "rca_persistor_queue_depth",
            "Ready messages in the persistor queue (sampled).",
            registry=r,
        )
