"""The evaluator at the service's edge: off during recovery, then incremental.

While recovery replays and drains, evaluators are disabled and the vertices
that change are only remembered (the dirty set). Enabling evaluates exactly
those — no full-graph pass after a takeover — or the whole graph after a fresh
start. From then on every datasource event's changes are evaluated as it is
processed, and each evaluation round goes back through the processor as one
action event: sequenced, logged and replayed like every other event.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graph_service.evaluator import (
    Evaluator,
    evaluation_trigger,
    run_follow_ups,
    run_pending,
    touched_vertices,
)
from graph_service.processor import Outcome
from graph_service.templates import DEFAULT_DIR, Template, TemplateError, load_templates
from rca_common.logging import get_logger

if TYPE_CHECKING:
    from graph_service.ingest import Ingest

log = get_logger(__name__)

VITRAGE = "vitrage"


class ReplayDirt:
    """Which replayed records the evaluators have not seen, so that enabling after a
    takeover evaluates only those (not every vertex the replayed log touched).

    A record of an epoch whose evaluators had been enabled, after the seq at which
    they were, was evaluated live, synchronously with its trigger — except, maybe,
    the last trigger of the log (its leader may have died before logging all of its
    rounds; each ``vitrage`` record after a trigger is one whole round of it).
    Records before the newest enabling pass were covered by it. Every other record
    (a leader that died before enabling) is dirty.

    A pass (epoch e at seq P) counts only once a record of epoch e at P or later is
    replayed: only then is the history up to P the one e evaluated (e may have
    recorded its pass and died before its records up to P reached the log, and the
    next leader reused those seqs). A hot standby learns of passes as it follows
    the log (:meth:`advance`).
    """

    def __init__(self, dirty: dict[str, None], enabled: dict[int, int]) -> None:
        self.dirty = dirty  # where dirty vertices go (the evaluation's, or a hot standby's)
        self.enabled: dict[int, int] = {}  # epoch -> seq of its enabling pass
        self.cut = 0  # the newest pass that counts: records up to it are covered
        self._uncounted: dict[int, int] = {}  # passes after the cut that do not count yet
        self._last_of: dict[int, int] = {}  # epoch -> the last seq replayed of it
        self._dirty_upto = 0  # the newest seq of a record that marked vertices dirty
        # the change lists of the last trigger's group (vertices derived only at finish:
        # per record, that would cost more than the replay's own work)
        self._group: list[Any] = []
        self.records_dirty = 0
        self.advance(enabled)

    def advance(self, enabled: dict[int, int]) -> None:
        """Take in the enabling passes known now (epoch -> seq)."""
        self.enabled = dict(enabled)
        self._uncounted = {e: s for e, s in enabled.items() if s > self.cut}
        for epoch in list(self._uncounted):
            self._count(epoch)

    def _count(self, epoch: int) -> None:
        """Count ``epoch``'s pass if a record of it at the pass's seq or later was replayed."""
        at = self._uncounted.get(epoch)
        if at is None or self._last_of.get(epoch, 0) < at:
            return
        del self._uncounted[epoch]
        if at > self.cut:
            self.cut = at
            if self._dirty_upto <= at:  # nothing dirty came after the pass
                self.dirty.clear()

    def __call__(self, seq: int, epoch: int, event: dict[str, Any], changes: Any) -> None:
        self._last_of[epoch] = seq
        if seq <= self.cut:
            return
        enabled_at = self.enabled.get(epoch)
        if enabled_at is None or seq <= enabled_at:
            self.records_dirty += 1
            self._dirty_upto = seq
            if changes:
                self.dirty.update(dict.fromkeys(touched_vertices(changes)))
        elif event.get("entity_type") != VITRAGE:  # a new trigger: the last one is complete
            self._group.clear()
            if changes:
                self._group.append(changes)
        elif changes:
            self._group.append(changes)
        if epoch in self._uncounted:
            self._count(epoch)

    @property
    def pending(self) -> dict[str, None]:
        """The vertices of the last trigger's group, in first-touch order."""
        pending: dict[str, None] = {}
        for changes in self._group:
            pending.update(dict.fromkeys(touched_vertices(changes)))
        return pending

    def finish(self) -> None:
        """The last trigger's group may be incomplete: evaluate it again (idempotent)."""
        self.dirty.update(self.pending)


class Evaluation:
    """Templates, the evaluator, the enabled flag and the dirty set."""

    def __init__(self, templates_dir: Path | None) -> None:
        self.directory = Path(templates_dir) if templates_dir else DEFAULT_DIR
        self.templates: list[Template] = []
        self.errors: list[TemplateError] = []
        self.evaluator = Evaluator([])
        self.enabled = False
        self.dirty: dict[str, None] = {}
        self.enabled_info: dict[str, Any] = {}

    def load(self) -> None:
        """Load every template; a bad one is logged with file, line and reason and skipped."""
        self.templates, self.errors = load_templates(self.directory)
        for err in self.errors:
            log.error("template rejected", file=err.file, line=err.line, reason=err.reason)
        log.info(
            "templates loaded",
            directory=str(self.directory),
            loaded=[t.name for t in self.templates],
            rejected=len(self.errors),
        )
        self.evaluator = Evaluator(self.templates)

    # ------------------------------------------------------------ the hooks
    def on_outcome(self, ingest: Ingest, outcome: Outcome) -> None:
        """Called by the ingest loop after each logged outcome."""
        if outcome.event.entity_type == VITRAGE:
            return  # rounds are followed up by run_pending itself
        if not self.enabled:
            self.mark_dirty(outcome.changes)
            return
        run_follow_ups(ingest.processor, self.evaluator, outcome, process=ingest.process_local)

    def mark_dirty(self, changes: Any) -> None:
        if changes:
            self.dirty.update(dict.fromkeys(touched_vertices(changes)))

    def enable(self, ingest: Ingest, trigger_id: str, whole_graph: bool) -> None:
        """Evaluate what changed while disabled (or everything), then stay enabled."""
        processor = ingest.processor
        started = time.monotonic()
        dirty = len(self.dirty)
        outcomes: list[Outcome] = []
        if processor.clock is not None and self.templates:
            trigger = evaluation_trigger(trigger_id, processor.clock)
            if whole_graph:
                pending = self.evaluator.evaluate_all(processor.graph, processor.actions, trigger)
            else:
                pending = self.evaluator.evaluate_vertices(
                    processor.graph, processor.actions, list(self.dirty), trigger
                )
            outcomes = run_pending(
                processor, self.evaluator, trigger, pending, process=ingest.process_local
            )
        self.dirty.clear()
        self.enabled = True
        self.enabled_info = {
            "scope": "whole graph" if whole_graph else "changed while disabled",
            "dirty_vertices": None if whole_graph else dirty,
            "action_events": len(outcomes),  # one per round
            "action_steps": sum(len(o.event.payload["steps"]) for o in outcomes),
            "duration_s": round(time.monotonic() - started, 6),
        }
        log.info("evaluators enabled", **self.enabled_info)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "templates": len(self.templates),
            "rejected": len(self.errors),
            "dirty_vertices": len(self.dirty),
            **({"last_enable": self.enabled_info} if self.enabled_info else {}),
        }

    def listing(self) -> list[dict[str, Any]]:
        """For ``GET /v1/templates``: each template and each rejected file, with status."""
        out: list[dict[str, Any]] = [
            {
                "name": t.name,
                "file": t.file,
                "status": "loaded",
                "description": t.description,
                "scenarios": len(t.scenarios),
            }
            for t in self.templates
        ]
        out += [
            {"file": e.file, "status": "rejected", "line": e.line, "reason": e.reason}
            for e in self.errors
        ]
        return out
