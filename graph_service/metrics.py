"""Prometheus metrics of one graph-service instance (own registry: tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "rca_events_total",
            "Events handled, by entity type and outcome (applied, stale, duplicate).",
            ["entity_type", "status"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "rca_dead_lettered_total",
            "Messages or events sent to the dead-letter queue.",
            registry=r,
        )
        self.batch_latency = Histogram(
            "rca_message_processing_seconds",
            "Time to process one collector message (a batch of events).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.lag = Gauge(
            "rca_event_lag_seconds",
            "Wall-clock time minus the sample timestamp of the last processed event.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "rca_events_queue_depth",
            "Messages waiting in the events queue (sampled).",
            registry=r,
        )
        self.vertices = Gauge("rca_graph_vertices", "Vertices in the entity graph.", registry=r)
        self.edges = Gauge("rca_graph_edges", "Edges in the entity graph.", registry=r)
        self.last_seq = Gauge(
            "rca_last_seq", "Sequence number of the last processed event.", registry=r
        )
        self.snapshot_pause = Histogram(
            "rca_snapshot_pause_seconds",
            "Time the event loop stood still to take a snapshot (the fork).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.gc_pause = Histogram(
            "rca_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, by generation (2: full).",
            ["generation"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self._gc_children = [self.gc_pause.labels(str(g)) for g in range(3)]
        self.active = Gauge("rca_active", "1 when this instance is the active one.", registry=r)
        self.standby_lag = Gauge(
            "rca_hot_standby_lag_records",
            "Records the persistor committed that this hot standby's replica has not"
            " applied yet (-1: no replica).",
            registry=r,
        )

    def observe_gc(self, generation: int, seconds: float) -> None:
        self._gc_children[generation].observe(seconds)
