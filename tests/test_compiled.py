"""The compiled pure core (setup.py, rca_common/compiled.py) runs the same code as its
Python source: the same streams give the same outcomes, changes, graph bytes,
bookkeeping and evaluator actions, compiled in this process and from the sources in a
fresh one."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from rca_common import compiled

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rca_common", "graph_service", "tests")


def digest(seed: int = 5, steps: int = 2500) -> str:
    """Everything the processor and the evaluator produced for seeded streams, hashed
    (see tests/graph_service/test_determinism.py for what the first stream exercises)."""
    from graph_service.processor import Processor
    from graph_service.transformers import MalformedEvent
    from tests.graph_service.core_helpers import bookkeeping, graph_bytes
    from tests.graph_service.test_determinism import StreamGen

    events = StreamGen(seed=seed).generate(steps)
    p = Processor(min_time_to_delete=300.0, recent_capacity=1500)
    h = hashlib.sha256()
    for event in events:
        try:
            outcome = p.process(event)
        except MalformedEvent as exc:
            h.update(exc.reason.encode())
            continue
        h.update(outcome.status.encode())
        h.update(orjson.dumps(outcome.changes))
    h.update(graph_bytes(p))
    h.update(pickle.dumps(bookkeeping(p), protocol=5))
    # The evaluator with the shipped templates, to the fixpoint of every event (see
    # tests/graph_service/test_evaluator_replay.py for what the storms exercise).
    from tests.graph_service.test_evaluator_replay import Storms, env, fingerprint, run

    e = env()
    log = fingerprint(run(e, Storms(seed).generate(300)))
    # Event ids come from a counter shared by the test helpers: not part of the result.
    h.update(pickle.dumps([(status, changes) for _, status, changes in log], protocol=5))
    h.update(graph_bytes(e.p))
    h.update(pickle.dumps(e.p.actions.export(), protocol=5))
    return h.hexdigest()


def test_compiled_modules_are_fresh() -> None:
    """An extension built before its source was edited would still run (and shadow
    the edit): ``make build`` recompiles."""
    assert compiled.stale() == []


def test_compiled_and_pure_python_give_the_same_results(tmp_path: Path) -> None:
    if not compiled.status()["modules"]:
        pytest.skip("nothing compiled here (no Cython or no C compiler): nothing to compare")
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"),
        )
    script = (
        "import json\n"
        "from rca_common import compiled\n"
        "from tests.test_compiled import digest\n"
        "print(json.dumps({'compiled': compiled.status()['modules'], 'digest': digest(),"
        " 'file': __import__('graph_service.processor').processor.__file__}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    pure = orjson.loads(out.stdout)
    assert pure["compiled"] == [], pure  # the copy runs from source
    assert pure["file"] == str(tmp_path / "graph_service" / "processor.py")
    assert pure["digest"] == digest()
