"""Vitrage version-3 templates: load, validate, and say exactly what is wrong.

A template is YAML with ``metadata`` (``version: 3``, ``name``, ``type:
standard``, ``description``), optional ``parameters`` (used as
``get_param(name)``), ``entities`` (id -> vertex properties; ``type``,
``category``, ``name``, any other property; ``<key>.regex`` matches a regular
expression) and ``scenarios`` (``condition`` + ``actions``).

A bad template is rejected with its file, the line YAML gives for the offending
key and the reason; the other templates of the directory still load. The YAML is
read with a SafeLoader subclass whose mappings and sequences remember the line
of every key and item, so every check can point at a line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from graph_service.conditions import (
    And,
    Clause,
    ConditionError,
    EntityTerm,
    Node,
    Not,
    Or,
    Relationship,
    parse,
    to_dnf,
)
from graph_service.entity_graph import ALARM, CATEGORY, RESOURCE, TYPE
from graph_service.states import StateNormalizer
from graph_service.transformers import ATTACHED, CAUSES, CONTAINS, ON, category_of
from rca_common.events import EntityType

DEFAULT_DIR = Path(__file__).with_name("templates")

# Vitrage's edge labels (vitrage.common.constants.EdgeLabel); the collector's
# topology uses the first four.
RELATIONSHIP_LABELS: tuple[str, ...] = (
    CONTAINS,
    ON,
    ATTACHED,
    CAUSES,
    "attached_public",
    "attached_private",
    "connect",
    "managed_by",
    "comprised",
)

RAISE_ALARM = "raise_alarm"
SET_STATE = "set_state"
ADD_CAUSAL_RELATIONSHIP = "add_causal_relationship"
MARK_DOWN = "mark_down"
ACTION_TYPES: tuple[str, ...] = (RAISE_ALARM, SET_STATE, ADD_CAUSAL_RELATIONSHIP, MARK_DOWN)

# action type -> (required fields, optional fields)
_ACTION_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    RAISE_ALARM: (("target", "alarm_name", "severity"), ("causing_alarm",)),
    SET_STATE: (("target", "state"), ()),
    ADD_CAUSAL_RELATIONSHIP: (("source", "target"), ()),
    MARK_DOWN: (("target",), ()),
}
# field -> the entity category it must refer to
_FIELD_CATEGORY = {"target": RESOURCE, "causing_alarm": ALARM}
_CAUSAL_CATEGORY = ALARM

_TOP_LEVEL = ("metadata", "parameters", "entities", "scenarios")
_ENTITY_ID = re.compile(r"^[A-Za-z_][\w.-]*$")
_GET_PARAM = re.compile(r"^\s*get_param\(\s*([\w.-]+)\s*\)\s*$")
_KEYWORDS = {"and", "or", "not"}
_KNOWN_TYPES = tuple(t.value for t in EntityType)
# Template property names that are stored under Vitrage's own names on a vertex.
_PROPERTY_KEYS = {"type": TYPE, "category": CATEGORY}
REGEX_SUFFIX = ".regex"


class TemplateError(ValueError):
    """A template that cannot be loaded: where (file, line when YAML gives one) and why."""

    def __init__(self, file: str, line: int | None, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}" if line else f"{file}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


# ------------------------------------------------------------------ the model
@dataclass(frozen=True)
class EntitySpec:
    """A template entity: the vertex properties a match must have."""

    id: str
    category: str
    type: str | None
    props: tuple[tuple[str, Any], ...]  # vertex key -> exact value
    regexes: tuple[tuple[str, re.Pattern[str]], ...]  # vertex key -> pattern (re.match)
    line: int

    @property
    def keys(self) -> frozenset[str]:
        """The vertex properties this entity reads."""
        return frozenset(k for k, _ in self.props) | frozenset(k for k, _ in self.regexes)


@dataclass(frozen=True)
class ActionSpec:
    """One action of a scenario; entity fields hold template entity ids."""

    kind: str
    target: str
    line: int
    source: str | None = None
    causing_alarm: str | None = None
    alarm_name: str | None = None
    severity: str | None = None
    state: str | None = None

    @property
    def entities(self) -> tuple[str, ...]:
        return tuple(e for e in (self.target, self.source, self.causing_alarm) if e)


@dataclass(frozen=True)
class Scenario:
    index: int
    condition: str
    clauses: tuple[Clause, ...]
    actions: tuple[ActionSpec, ...]
    line: int


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    file: str
    digest: str
    entities: dict[str, EntitySpec]
    scenarios: tuple[Scenario, ...]
    name_line: int = 0

    @property
    def key(self) -> str:
        """The template's identity in action keys: a changed template gets a new one,
        so bookkeeping made under the old text is never mistaken for the new."""
        return f"{self.name}#{self.digest}"


# -------------------------------------------------------------- line-aware YAML
class _Map(dict):  # type: ignore[type-arg]
    """A mapping that knows its line and the line of each key."""

    line: int
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class _Seq(list):  # type: ignore[type-arg]
    """A sequence that knows its line and the line of each item."""

    line: int
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences keep the line of every key and item."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> Any:
    data = _Map()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        if key in data:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> Any:
    data = _Seq()
    data.line = node.start_mark.line + 1
    data.item_lines = []
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.item_lines.append(child.start_mark.line + 1)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


# ------------------------------------------------------------------ validation
class _Checker:
    """Validation of one document; every failure raises TemplateError with a line."""

    def __init__(self, file: str, states: StateNormalizer, params: dict[str, Any] | None) -> None:
        self.file = file
        self.states = states
        self.given = params or {}
        self.params: dict[str, tuple[bool, Any]] = {}  # name -> (has value, value)

    def fail(self, line: int | None, reason: str) -> TemplateError:
        return TemplateError(self.file, line, reason)

    def mapping(self, value: Any, line: int, what: str) -> _Map:
        if not isinstance(value, _Map):
            raise self.fail(line, f"{what} must be a mapping")
        return value

    def sequence(self, value: Any, line: int, what: str) -> _Seq:
        if not isinstance(value, _Seq):
            raise self.fail(line, f"{what} must be a list")
        return value

    def text(self, value: Any, line: int, what: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(line, f"{what} must be a non-empty string")
        return value

    # ---------------------------------------------------------------- sections
    def document(self, doc: Any, text: str) -> Template:
        doc = self.mapping(doc, 1, "a template")
        for key in doc:
            if key not in _TOP_LEVEL:
                raise self.fail(
                    doc.line_of(key),
                    f"unknown section {key!r} (expected {', '.join(_TOP_LEVEL)})",
                )
        for key in ("metadata", "entities", "scenarios"):
            if key not in doc:
                raise self.fail(doc.line, f"the {key} section is missing")
        name, description, name_line = self.metadata(doc["metadata"], doc.line_of("metadata"))
        self.parameters(doc.get("parameters"), doc.line_of("parameters"))
        entities = self.entities(doc["entities"], doc.line_of("entities"))
        scenarios = self.scenarios(doc["scenarios"], doc.line_of("scenarios"), entities)
        given = "".join(f"\0{k}={self.given[k]!r}" for k in sorted(self.given))
        digest = hashlib.sha256((text + given).encode()).hexdigest()[:12]
        return Template(name, description, self.file, digest, entities, scenarios, name_line)

    def metadata(self, value: Any, line: int) -> tuple[str, str, int]:
        meta = self.mapping(value, line, "metadata")
        version = meta.get("version")
        if str(version) != "3":
            raise self.fail(meta.line_of("version"), f"metadata.version must be 3, not {version!r}")
        name = self.text(meta.get("name"), meta.line_of("name"), "metadata.name")
        kind = meta.get("type", "standard")
        if kind != "standard":
            raise self.fail(meta.line_of("type"), f"metadata.type must be 'standard', not {kind!r}")
        description = meta.get("description", "")
        if not isinstance(description, str):
            raise self.fail(meta.line_of("description"), "metadata.description must be a string")
        return name.strip(), description, meta.line_of("name")

    def parameters(self, value: Any, line: int) -> None:
        if value is None:
            return
        params = self.mapping(value, line, "parameters")
        for name, spec in params.items():
            where = params.line_of(name)
            if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
                raise self.fail(where, f"bad parameter name {name!r}")
            if spec is None:
                spec = _Map()
            spec = self.mapping(spec, where, f"parameter {name!r}")
            for key in spec:
                if key not in ("description", "default"):
                    raise self.fail(spec.line_of(key), f"parameter {name!r}: unknown key {key!r}")
            if name in self.given:
                self.params[name] = (True, self.given[name])
            else:
                self.params[name] = ("default" in spec, spec.get("default"))
        for name in self.given:
            if name not in self.params:
                raise self.fail(line, f"a value is given for the undeclared parameter {name!r}")

    def resolve(self, value: Any, line: int) -> Any:
        """``get_param(name)`` replaced by the parameter's value."""
        if not isinstance(value, str):
            return value
        m = _GET_PARAM.match(value)
        if m is None:
            return value
        name = m.group(1)
        if name not in self.params:
            raise self.fail(line, f"get_param({name}): no such parameter")
        has_value, resolved = self.params[name]
        if not has_value:
            raise self.fail(line, f"get_param({name}): the parameter has no default and no value")
        return resolved

    # ---------------------------------------------------------------- entities
    def entities(self, value: Any, line: int) -> dict[str, EntitySpec]:
        block = self.mapping(value, line, "entities")
        if not block:
            raise self.fail(line, "at least one entity must be defined")
        out: dict[str, EntitySpec] = {}
        for eid, props in block.items():
            where = block.line_of(eid)
            if not isinstance(eid, str) or not _ENTITY_ID.match(eid) or eid.lower() in _KEYWORDS:
                raise self.fail(where, f"bad entity id {eid!r}")
            out[eid] = self.entity(eid, self.mapping(props, where, f"entity {eid!r}"), where)
        return out

    def entity(self, eid: str, block: _Map, line: int) -> EntitySpec:
        exact: dict[str, Any] = {}
        regexes: list[tuple[str, re.Pattern[str]]] = []
        for key, raw in block.items():
            where = block.line_of(key)
            if not isinstance(key, str) or not key:
                raise self.fail(where, f"entity {eid!r}: bad property name {key!r}")
            value = self.resolve(raw, where)
            if key.endswith(REGEX_SUFFIX):
                base = key[: -len(REGEX_SUFFIX)]
                if not base or not isinstance(value, str):
                    raise self.fail(where, f"entity {eid!r}: {key} needs a string pattern")
                try:
                    pattern = re.compile(value)
                except re.error as exc:
                    raise self.fail(
                        where, f"entity {eid!r}: bad regular expression: {exc}"
                    ) from None
                regexes.append((_PROPERTY_KEYS.get(base, base), pattern))
                continue
            if not isinstance(value, str | int | float | bool):
                raise self.fail(where, f"entity {eid!r}: {key} must be a plain value")
            exact[key] = value
        vtype = exact.get("type")
        category = exact.get("category")
        if vtype is None and category is None:
            raise self.fail(line, f"entity {eid!r} needs a type or a category")
        if vtype is not None and vtype not in _KNOWN_TYPES:
            raise self.fail(
                block.line_of("type"),
                f"entity {eid!r}: unknown type {vtype!r} (known: {', '.join(_KNOWN_TYPES)})",
            )
        if category is not None:
            category = str(category).upper()
            if category not in (ALARM, RESOURCE):
                raise self.fail(
                    block.line_of("category"),
                    f"entity {eid!r}: category must be ALARM or RESOURCE, not {category!r}",
                )
            exact["category"] = category
            if vtype is not None and category_of(vtype) != category:
                raise self.fail(
                    block.line_of("category"),
                    f"entity {eid!r}: type {vtype!r} is not of category {category}",
                )
        props = tuple((_PROPERTY_KEYS.get(k, k), v) for k, v in exact.items())
        return EntitySpec(
            eid,
            category or category_of(vtype),
            vtype,
            props,
            tuple(regexes),
            line,  # type: ignore[arg-type]
        )

    # --------------------------------------------------------------- scenarios
    def scenarios(
        self, value: Any, line: int, entities: dict[str, EntitySpec]
    ) -> tuple[Scenario, ...]:
        items = self.sequence(value, line, "scenarios")
        if not items:
            raise self.fail(line, "at least one scenario must be defined")
        out = []
        for index, (item, where) in enumerate(zip(items, items.item_lines, strict=True)):
            block = self.mapping(item, where, f"scenario {index}")
            out.append(self.scenario(index, block, entities))
        return tuple(out)

    def scenario(self, index: int, block: _Map, entities: dict[str, EntitySpec]) -> Scenario:
        for key in block:
            if key not in ("condition", "actions"):
                raise self.fail(block.line_of(key), f"scenario {index}: unknown key {key!r}")
        for key in ("condition", "actions"):
            if key not in block:
                raise self.fail(block.line, f"scenario {index}: {key} is missing")
        cline = block.line_of("condition")
        condition = self.text(block["condition"], cline, f"scenario {index}: condition")
        clauses = self.condition(condition, cline, entities)
        items = self.sequence(block["actions"], block.line_of("actions"), "actions")
        if not items:
            raise self.fail(block.line_of("actions"), f"scenario {index}: no actions")
        actions = tuple(
            self.action(item, where, entities, clauses)
            for item, where in zip(items, items.item_lines, strict=True)
        )
        return Scenario(index, condition, clauses, actions, block.line)

    def condition(
        self, text: str, line: int, entities: dict[str, EntitySpec]
    ) -> tuple[Clause, ...]:
        try:
            tree = parse(text)
            for term in _terms(tree):
                names = (
                    (term.entity,) if isinstance(term, EntityTerm) else (term.source, term.target)
                )
                for name in names:
                    if name not in entities:
                        raise ConditionError(f"unknown entity {name!r} in the condition")
                if isinstance(term, Relationship) and term.label not in RELATIONSHIP_LABELS:
                    raise ConditionError(
                        f"unknown relationship label {term.label!r} "
                        f"(known: {', '.join(RELATIONSHIP_LABELS)})"
                    )
            return to_dnf(tree)
        except ConditionError as exc:
            raise self.fail(line, f"condition: {exc}") from None

    def action(
        self,
        item: Any,
        line: int,
        entities: dict[str, EntitySpec],
        clauses: tuple[Clause, ...],
    ) -> ActionSpec:
        block = self.mapping(item, line, "an action")
        if len(block) != 1:
            raise self.fail(line, "an action is a mapping with exactly one action type")
        [(kind, body)] = block.items()
        if kind not in _ACTION_FIELDS:
            raise self.fail(
                line, f"unknown action type {kind!r} (known: {', '.join(ACTION_TYPES)})"
            )
        fields = self.mapping(body, line, kind)
        required, optional = _ACTION_FIELDS[kind]
        for key in fields:
            if key not in required and key not in optional:
                raise self.fail(fields.line_of(key), f"{kind}: unknown field {key!r}")
        for key in required:
            if key not in fields:
                raise self.fail(line, f"{kind} needs {key!r}")
        values = {k: self.resolve(v, fields.line_of(k)) for k, v in fields.items()}
        for key in ("target", "source", "causing_alarm"):
            if key in values:
                self.entity_ref(kind, key, values[key], fields.line_of(key), entities, clauses)
        spec = ActionSpec(
            kind,
            values["target"],
            line,
            source=values.get("source"),
            causing_alarm=values.get("causing_alarm"),
        )
        if kind == RAISE_ALARM:
            name = self.text(values["alarm_name"], fields.line_of("alarm_name"), "alarm_name")
            severity = self.severity(values["severity"], fields.line_of("severity"))
            spec = replace(spec, alarm_name=name, severity=severity)
        elif kind == SET_STATE:
            state = self.state(values["state"], fields.line_of("state"), entities[spec.target])
            spec = replace(spec, state=state)
        return spec

    def entity_ref(
        self,
        kind: str,
        field: str,
        value: Any,
        line: int,
        entities: dict[str, EntitySpec],
        clauses: tuple[Clause, ...],
    ) -> None:
        if not isinstance(value, str) or value not in entities:
            raise self.fail(line, f"{kind}.{field}: unknown entity {value!r}")
        want = _CAUSAL_CATEGORY if kind == ADD_CAUSAL_RELATIONSHIP else _FIELD_CATEGORY[field]
        if entities[value].category != want:
            raise self.fail(
                line, f"{kind}.{field}: {value!r} is a {entities[value].category}, not an {want}"
            )
        for clause in clauses:
            if value not in clause.entities:
                raise self.fail(
                    line,
                    f"{kind}.{field}: {value!r} must appear (not negated) in every 'or' branch "
                    f"of the condition; the branch '{clause}' does not bind it",
                )

    def severity(self, value: Any, line: int) -> str:
        text = self.text(value, line, "severity")
        known = self.states.table(EntityType.VITRAGE.value).priority
        if known and text.upper() not in known:
            raise self.fail(line, f"severity {text!r} is not one of {', '.join(known)}")
        return text

    def state(self, value: Any, line: int, target: EntitySpec) -> str:
        text = self.text(value, line, "state").upper()
        if target.type is not None and target.type in self.states.by_type:
            known = self.states.table(target.type).priority
            if text not in known:
                raise self.fail(
                    line, f"state {text!r} is not a state of {target.type} ({', '.join(known)})"
                )
        return text


def _terms(node: Node) -> list[Relationship | EntityTerm]:
    if isinstance(node, Relationship | EntityTerm):
        return [node]
    if isinstance(node, Not):
        return _terms(node.operand)
    assert isinstance(node, And | Or)
    return [t for op in node.operands for t in _terms(op)]


# ----------------------------------------------------------------- entry points
def validate_text(
    text: str,
    filename: str,
    *,
    states: StateNormalizer | None = None,
    params: dict[str, Any] | None = None,
) -> Template:
    """Parse and validate one template; raises :class:`TemplateError` (file, line, reason)."""
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise TemplateError(filename, line, f"not valid YAML: {reason}") from None
    except yaml.YAMLError as exc:
        raise TemplateError(filename, None, f"not valid YAML: {exc}") from None
    checker = _Checker(filename, states or StateNormalizer.load(), params)
    return checker.document(doc, text)


def load_templates(
    directory: str | Path = DEFAULT_DIR, *, states: StateNormalizer | None = None
) -> tuple[list[Template], list[TemplateError]]:
    """Every ``*.yaml`` of ``directory`` (sorted by file name): the good ones and the
    errors of the bad ones. A name used twice keeps the first file's template."""
    states = states or StateNormalizer.load()
    templates: list[Template] = []
    errors: list[TemplateError] = []
    by_name: dict[str, Template] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            text = path.read_text(encoding="utf-8")
            template = validate_text(text, str(path), states=states)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(TemplateError(str(path), None, f"cannot read: {exc}"))
            continue
        except TemplateError as exc:
            errors.append(exc)
            continue
        first = by_name.get(template.name)
        if first is not None:
            errors.append(
                TemplateError(
                    str(path),
                    template.name_line,
                    f"duplicate template name {template.name!r} (already loaded from {first.file})",
                )
            )
            continue
        by_name[template.name] = template
        templates.append(template)
    return templates, errors
