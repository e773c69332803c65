"""Scenario conditions: ``a [label] b`` terms combined with and/or/not and parentheses.

A condition is parsed into a small AST and then into disjunctive normal form,
as Vitrage does (it uses sympy's ``to_dnf``): a list of clauses, each a
conjunction of positive terms and negated relationships. The evaluator matches
one clause at a time, so everything structural that makes a clause unmatchable
is rejected here, with the reason:

* a clause with no positive term (``not a [on] b``, ``not (x and y)``): a
  condition cannot be purely negative;
* ``not`` of a bare entity (only relationships can be negated);
* a negated relationship sharing no entity with the clause's positive terms
  (there would be nothing to anchor it to);
* positive terms that do not form one connected pattern (matching grows from a
  changed element outward, never by scanning the graph);
* a clause that contains a term and its negation.

Keywords are case-insensitive and whitespace is free; labels are lower-cased;
entity ids are case-sensitive (they are the template's keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

MAX_CLAUSES = 64


class ConditionError(ValueError):
    """A condition that cannot be used; ``column`` (1-based) when the text says where."""

    def __init__(self, reason: str, column: int | None = None) -> None:
        super().__init__(reason if column is None else f"{reason} (column {column})")
        self.reason = reason
        self.column = column


# ------------------------------------------------------------------------ AST
@dataclass(frozen=True, slots=True)
class Relationship:
    """``source [label] target``: an edge of that label from source to target."""

    source: str
    label: str
    target: str

    def __str__(self) -> str:
        return f"{self.source} [{self.label}] {self.target}"


@dataclass(frozen=True, slots=True)
class EntityTerm:
    """A bare entity: it must be bound to some vertex (no relationship required)."""

    entity: str

    def __str__(self) -> str:
        return self.entity


Term = Relationship | EntityTerm


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


Node = Relationship | EntityTerm | Not | And | Or


@dataclass(frozen=True, slots=True)
class Clause:
    """One conjunction of the normal form."""

    positive: tuple[Term, ...]
    negative: tuple[Relationship, ...]

    @property
    def entities(self) -> tuple[str, ...]:
        """Entities bound by the positive terms, in order of first appearance."""
        seen: dict[str, None] = {}
        for term in self.positive:
            if isinstance(term, Relationship):
                seen[term.source] = None
                seen[term.target] = None
            else:
                seen[term.entity] = None
        return tuple(seen)

    @property
    def relationships(self) -> tuple[Relationship, ...]:
        return tuple(t for t in self.positive if isinstance(t, Relationship))

    def __str__(self) -> str:
        parts = [str(t) for t in self.positive] + [f"not {r}" for r in self.negative]
        return " and ".join(parts)


# -------------------------------------------------------------------- parsing
_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<bracket>\[\s*(?P<label>[A-Za-z_][\w.-]*)?\s*\])"
    r"|(?P<word>[A-Za-z_][\w.-]*)|(?P<bad>\S))"
)
_KEYWORDS = {"and", "or", "not"}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # open, close, label, word, and, or, not, end
    text: str
    column: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:  # only trailing whitespace is left
            break
        pos = m.end()
        kind = m.lastgroup or ""
        column = m.start(kind) + 1
        if kind == "bad":
            raise ConditionError(f"unexpected character {m.group('bad')!r}", column)
        if kind == "bracket":
            label = m.group("label")
            if label is None:
                raise ConditionError("empty relationship label '[]'", column)
            tokens.append(_Tok("label", label.lower(), column))
            continue
        value = m.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind = value.lower()
        tokens.append(_Tok(kind, value, column))
    tokens.append(_Tok("end", "", len(text) + 1))
    return tokens


class _Parser:
    """Recursive descent: or < and < not < (group | term)."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self, kind: str) -> _Tok:
        tok = self.peek()
        if tok.kind != kind:
            raise ConditionError(
                f"expected {_describe(kind)}, found {_describe_tok(tok)}", tok.column
            )
        self.i += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ConditionError("empty condition")
        node = self.disjunction()
        tok = self.peek()
        if tok.kind != "end":
            raise ConditionError(f"unexpected {_describe_tok(tok)}", tok.column)
        return node

    def disjunction(self) -> Node:
        items = [self.conjunction()]
        while self.peek().kind == "or":
            self.i += 1
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self) -> Node:
        items = [self.negation()]
        while self.peek().kind == "and":
            self.i += 1
            items.append(self.negation())
        return items[0] if len(items) == 1 else And(tuple(items))

    def negation(self) -> Node:
        if self.peek().kind == "not":
            self.i += 1
            return Not(self.negation())
        return self.primary()

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "open":
            self.i += 1
            node = self.disjunction()
            self.take("close")
            return node
        source = self.take("word").text
        if self.peek().kind != "label":
            return EntityTerm(source)
        label = self.take("label").text
        target = self.take("word").text
        return Relationship(source, label, target)


def _describe(kind: str) -> str:
    return {
        "word": "an entity id",
        "close": "')'",
        "label": "a '[label]'",
    }.get(kind, kind)


def _describe_tok(tok: _Tok) -> str:
    if tok.kind == "end":
        return "end of condition"
    if tok.kind == "label":
        return f"'[{tok.text}]'"
    return repr(tok.text)


def parse(text: str) -> Node:
    """Parse a condition into its AST; raises :class:`ConditionError`."""
    if not isinstance(text, str):
        raise ConditionError("a condition must be a string")
    return _Parser(text).parse()


# ---------------------------------------------------------- normal form
_Literal = tuple[Term, bool]  # (term, positive)


def _dnf(node: Node, positive: bool = True) -> list[list[_Literal]]:
    """Clauses of ``node`` (negated when ``positive`` is False), negation pushed to the
    relationships with De Morgan's laws."""
    if isinstance(node, Not):
        return _dnf(node.operand, not positive)
    if isinstance(node, Relationship | EntityTerm):
        if not positive and isinstance(node, EntityTerm):
            raise ConditionError(
                f"'not' applies to a relationship, not to the bare entity {node.entity!r}"
            )
        return [[(node, positive)]]
    conjunctive = isinstance(node, And) == positive  # De Morgan flips and/or under not
    parts = [_dnf(op, positive) for op in node.operands]
    if not conjunctive:
        return [clause for part in parts for clause in part]
    out: list[list[_Literal]] = []
    for combo in product(*parts):
        out.append([lit for clause in combo for lit in clause])
        if len(out) > MAX_CLAUSES:
            raise ConditionError(f"the condition expands to more than {MAX_CLAUSES} or-branches")
    return out


def to_dnf(node: Node) -> tuple[Clause, ...]:
    """The disjunctive normal form of a parsed condition, validated clause by clause."""
    clauses: list[Clause] = []
    for literals in _dnf(node):
        unique = list(dict.fromkeys(literals))
        positive = tuple(t for t, pos in unique if pos)
        negative = tuple(t for t, pos in unique if not pos)
        clause = Clause(positive, negative)  # type: ignore[arg-type]
        _check_clause(clause)
        if clause not in clauses:
            clauses.append(clause)
    if len(clauses) > MAX_CLAUSES:
        raise ConditionError(f"the condition expands to more than {MAX_CLAUSES} or-branches")
    return tuple(clauses)


def parse_dnf(text: str) -> tuple[Clause, ...]:
    """Parse and normalise in one step."""
    return to_dnf(parse(text))


def _check_clause(clause: Clause) -> None:
    if not clause.positive:
        raise ConditionError(
            f"a condition cannot be purely negative: the branch '{clause}' has no positive term"
        )
    for rel in clause.negative:
        if rel in clause.positive:
            raise ConditionError(f"the branch '{clause}' requires '{rel}' and its negation")
    for rel in (*clause.relationships, *clause.negative):
        if rel.source == rel.target:
            raise ConditionError(f"'{rel}' relates an entity to itself")
    bound = set(clause.entities)
    for rel in clause.negative:
        if rel.source not in bound and rel.target not in bound:
            raise ConditionError(
                f"'not {rel}' shares no entity with the positive terms of the branch '{clause}'"
            )
    _check_connected(clause)


def _check_connected(clause: Clause) -> None:
    entities = clause.entities
    links: dict[str, set[str]] = {e: set() for e in entities}
    for rel in clause.relationships:
        links[rel.source].add(rel.target)
        links[rel.target].add(rel.source)
    seen = {entities[0]}
    frontier = [entities[0]]
    while frontier:
        nxt = [n for e in frontier for n in links[e] if n not in seen]
        seen.update(nxt)
        frontier = nxt
    if len(seen) != len(entities):
        apart = ", ".join(e for e in entities if e not in seen)
        raise ConditionError(
            f"the positive terms of the branch '{clause}' are not connected "
            f"({apart} not related to {entities[0]})"
        )
