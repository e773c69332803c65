"""Which modules of the pure core are compiled to C extensions (setup.py), and
whether this process runs them compiled.

These modules are plain, synchronous Python with no I/O: the processor's and the
replay's hot path. Compiled by Cython they run the same code, with the same
results byte for byte (tests/test_compiled.py), in fewer instructions per event.
"""

from __future__ import annotations

import importlib
from pathlib import Path

COMPILED = (
    "rca_common.timestamps",
    "rca_common.canonical",
    "rca_common.records",
    "graph_service.entity_graph",
    "graph_service.transformers",
    "graph_service.states",
    "graph_service.processor",
    "graph_service.log_replay",
    # the evaluator's pure core: template matching, conditions, the action registry
    "graph_service.conditions",
    "graph_service.matcher",
    "graph_service.actions",
    "graph_service.evaluator",
    "graph_service.evaluation",
)


def is_compiled(module: str) -> bool:
    """True when ``module`` is loaded from an extension, not from its source."""
    path = getattr(importlib.import_module(module), "__file__", None) or ""
    return not path.endswith(".py")


def status() -> dict[str, object]:
    """For ``/status`` and the benchmarks: compiled or not, and stale extensions (a
    source edited after its extension was built: the extension still runs)."""
    compiled = [m for m in COMPILED if is_compiled(m)]
    return {"modules": compiled, "all": len(compiled) == len(COMPILED), "stale": stale()}


def stale() -> list[str]:
    """Compiled modules whose ``.py`` is newer than the extension that shadows it."""
    out = []
    for name in COMPILED:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        if path.endswith(".py"):
            continue
        source = Path(path).with_name(name.rpartition(".")[2] + ".py")
        if source.exists() and source.stat().st_mtime > Path(path).stat().st_mtime:
            out.append(name)
    return out
