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
    """

    def __init__(self, dirty: dict[str, None], enabled: dict[int, int]) -> None:
        self.dirty = dirty  # where dirty vertices go (the evaluation's, or a hot standby's)
        self.enabled: dict[int, int] = {}  # epoch -> seq of its enabling pass
        self.cut = 0  # the newest enabling pass replayed: records up to it are covered
        self._ahead: list[int] = []  # seqs of known passes not replayed yet, ascending
        self._dirty_upto = 0  # the newest seq of a record that marked vertices dirty
        self._last = 0  # the last seq replayed
        # the change lists of the last trigger's group (vertices derived only at finish:
        # per record, that would cost more than the replay's own work)
        self._group: list[Any] = []
        self.records_dirty = 0
        self.advance(enabled)

    def advance(self, enabled: dict[int, int]) -> None:
        """Take in the enabling passes known now. A pass counts once the replay has
        gone through its seq (all its records are then in the log replayed); a hot
        standby learns of passes as it follows the log."""
        self.enabled = dict(enabled)
        self._ahead = sorted(s for s in enabled.values() if s > self.cut)
        self._reach(self._last)

    def _reach(self, seq: int) -> None:
        """The replay has gone through ``seq``: the passes up to it count."""
        if not self._ahead or self._ahead[0] > seq:
            return
        while self._ahead and self._ahead[0] <= seq:
            self.cut = self._ahead.pop(0)
        if self._dirty_upto <= self.cut:  # nothing dirty came after the pass
            self.dirty.clear()

    def __call__(self, seq: int, epoch: int, event: dict[str, Any], changes: Any) -> None:
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
        self._last = seq
        if self._ahead and self._ahead[0] <= seq:
            self._reach(seq)

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
