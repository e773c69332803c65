"""The evaluator at the service's edge: off during recovery, then incremental.

While recovery replays and drains, evaluators are disabled and the vertices
that change are only remembered (the dirty set). Enabling evaluates exactly
those — no full-graph pass after a takeover — or the whole graph after a fresh
start. From then on every datasource event's changes are evaluated as it is
processed, and the action events go back through the processor: sequenced,
logged and replayed like every other event.
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
            return  # action events are followed up by run_pending itself
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
        issued = 0
        if processor.clock is not None and self.templates:
            trigger = evaluation_trigger(trigger_id, processor.clock)
            if whole_graph:
                events = self.evaluator.evaluate_all(processor.graph, processor.actions, trigger)
            else:
                events = self.evaluator.evaluate_vertices(
                    processor.graph, processor.actions, list(self.dirty), trigger
                )
            outcomes = run_pending(
                processor, self.evaluator, trigger, events, process=ingest.process_local
            )
            issued = len(outcomes)
        self.dirty.clear()
        self.enabled = True
        self.enabled_info = {
            "scope": "whole graph" if whole_graph else "changed while disabled",
            "dirty_vertices": None if whole_graph else dirty,
            "action_events": issued,
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
