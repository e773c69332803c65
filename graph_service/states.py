"""State normalisation from per-type YAML files (Vitrage's datasources_values).

Each datasource reports raw states in its own words; the graph stores the
normalised operational state and, for aggregation, the priority of each
operational state. The aggregated state of a vertex is the higher-priority one
of the datasource's state and a state set by the evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_DIR = Path(__file__).with_name("states")
UNKNOWN = "N/A"


class StateConfigError(ValueError):
    """A states file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class TypeStates:
    """The normalisation table of one entity type."""

    raw_to_operational: dict[str, str]
    priority: dict[str, int]
    default: str = UNKNOWN

    def operational(self, raw: object) -> str:
        if raw is None:
            return self.default
        return self.raw_to_operational.get(str(raw).upper(), self.default)

    def rank(self, operational: str | None) -> int:
        if operational is None:
            return -1
        return self.priority.get(operational.upper(), 0)


@dataclass(frozen=True)
class StateNormalizer:
    """Normalisation tables for every entity type that has a file."""

    by_type: dict[str, TypeStates] = field(default_factory=dict)
    # (entity type, raw string state) -> operational state: the processor asks for
    # every event, and datasources repeat a handful of raw states. Only ``str`` raws
    # (``True`` and ``1`` hash alike but normalise differently). Cleared when full.
    _cache: dict[tuple[str, str], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, directory: Path = DEFAULT_DIR) -> StateNormalizer:
        tables: dict[str, TypeStates] = {}
        for path in sorted(directory.glob("*.yaml")):
            tables[path.stem] = _load_file(path)
        return cls(tables)

    def table(self, entity_type: str) -> TypeStates:
        return self.by_type.get(entity_type) or _FALLBACK

    def operational(self, entity_type: str, raw: object) -> str:
        if type(raw) is not str:
            return self.table(entity_type).operational(raw)
        key = (entity_type, raw)
        op = self._cache.get(key)
        if op is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            op = self._cache[key] = self.table(entity_type).operational(raw)
        return op

    def aggregate(self, entity_type: str, operational: str, evaluator_state: str | None) -> str:
        """The higher-priority one of the datasource state and the evaluator's state."""
        if not evaluator_state:
            return operational
        table = self.table(entity_type)
        evaluator_state = evaluator_state.upper()
        if table.rank(evaluator_state) > table.rank(operational):
            return evaluator_state
        return operational


_FALLBACK = TypeStates(raw_to_operational={}, priority={})
_CACHE_MAX = 4096


def _load_file(path: Path) -> TypeStates:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StateConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("operational"), dict):
        raise StateConfigError(f"{path}: needs a mapping 'operational'")
    raw_map: dict[str, str] = {}
    priority: dict[str, int] = {}
    for op, spec in doc["operational"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("priority"), int):
            raise StateConfigError(f"{path}: state {op!r} needs an integer 'priority'")
        op_name = str(op).upper()
        priority[op_name] = spec["priority"]
        for raw in spec.get("raw", []):
            raw_map[str(raw).upper()] = op_name
    default = str(doc.get("default", UNKNOWN)).upper()
    return TypeStates(raw_map, priority, default)
