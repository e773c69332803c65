"""Condition parsing and disjunctive normal form, and what Vitrage rejects."""

from __future__ import annotations

import pytest

from graph_service.conditions import (
    MAX_CLAUSES,
    And,
    ConditionError,
    EntityTerm,
    Not,
    Or,
    Relationship,
    parse,
    parse_dnf,
)

A_ON_H = Relationship("alarm", "on", "host")
H_CONTAINS_I = Relationship("host", "contains", "instance")


def clauses(text: str) -> list[str]:
    return [str(c) for c in parse_dnf(text)]


# ----------------------------------------------------------------------- AST
def test_and_binds_tighter_than_or() -> None:
    tree = parse("a [on] b or a [on] c and c [contains] d")
    assert tree == Or(
        (
            Relationship("a", "on", "b"),
            And((Relationship("a", "on", "c"), Relationship("c", "contains", "d"))),
        )
    )


def test_keywords_and_labels_are_case_insensitive_and_whitespace_free() -> None:
    assert parse("alarm [on] host AND host [contains] instance") == parse(
        "  alarm[ ON ]host\tand\n host [Contains]   instance "
    )
    assert parse("alarm [on] host AnD NoT alarm2 [ON] host") == And(
        (A_ON_H, Not(Relationship("alarm2", "on", "host")))
    )


def test_entity_ids_keep_their_case() -> None:
    assert parse("Alarm [on] HOST") == Relationship("Alarm", "on", "HOST")


def test_parentheses_group() -> None:
    tree = parse("(a [on] b or a [on] c) and b [contains] d")
    assert isinstance(tree, And)
    assert isinstance(tree.operands[0], Or)


def test_a_bare_entity_is_a_term() -> None:
    assert parse("host") == EntityTerm("host")
    assert clauses("host") == ["host"]


# ------------------------------------------------------------------------ DNF
def test_and_distributes_over_or() -> None:
    assert clauses("(a [on] h or b [on] h) and h [contains] i") == [
        "a [on] h and h [contains] i",
        "b [on] h and h [contains] i",
    ]


def test_de_morgan_not_of_or_is_and_of_nots() -> None:
    [clause] = parse_dnf("i [on] h and not (a [on] h or b [on] h)")
    assert clause.positive == (Relationship("i", "on", "h"),)
    assert clause.negative == (Relationship("a", "on", "h"), Relationship("b", "on", "h"))


def test_de_morgan_not_of_and_is_or_of_nots() -> None:
    assert clauses("i [on] h and not (a [on] h and b [on] h)") == [
        "i [on] h and not a [on] h",
        "i [on] h and not b [on] h",
    ]


def test_double_negation_cancels() -> None:
    assert clauses("not not a [on] h") == ["a [on] h"]


def test_duplicate_terms_and_clauses_collapse() -> None:
    assert clauses("a [on] h and a [on] h") == ["a [on] h"]
    assert clauses("a [on] h or a [on] h") == ["a [on] h"]


def test_clause_entities_in_order_of_appearance() -> None:
    [clause] = parse_dnf("alarm [on] host and host [contains] instance and not x [on] host")
    assert clause.entities == ("alarm", "host", "instance")
    assert clause.relationships == (A_ON_H, H_CONTAINS_I)


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not a [on] h", "cannot be purely negative"),
        ("a [on] h or not b [on] h", "cannot be purely negative"),
        ("not (a [on] h and b [on] h)", "cannot be purely negative"),
        ("a [on] h and not h", "'not' applies to a relationship"),
        ("a [on] h and not (h and b [on] h)", "'not' applies to a relationship"),
        ("a [on] h and not x [on] y", "shares no entity"),
        ("a [on] h and b [on] x", "not connected"),
        ("a [on] h and not a [on] h", "and its negation"),
        ("a [on] a", "relates an entity to itself"),
        ("", "empty condition"),
        ("   ", "empty condition"),
    ],
)
def test_rejected(text: str, reason: str) -> None:
    with pytest.raises(ConditionError, match=reason):
        parse_dnf(text)


@pytest.mark.parametrize(
    ("text", "reason", "column"),
    [
        ("a [] b", "empty relationship label", 3),
        ("a [on b", "unexpected character '\\['", 3),
        ("a [on] b and", "expected an entity id, found end of condition", 13),
        ("a [on] b c", "unexpected 'c'", 10),
        ("(a [on] b", "expected '\\)'", 10),
        ("a [on] b)", "unexpected '\\)'", 9),
        ("a [on] b & c", "unexpected character '&'", 10),
        ("a [on] and", "expected an entity id, found 'and'", 8),
    ],
)
def test_syntax_errors_say_where(text: str, reason: str, column: int) -> None:
    with pytest.raises(ConditionError, match=reason) as info:
        parse(text)
    assert info.value.column == column


def test_expansion_is_bounded() -> None:
    # 7 two-way ors anded together: 128 clauses.
    text = " and ".join(f"(x [on] h or y{i} [on] h)" for i in range(7))
    assert MAX_CLAUSES < 2**7
    with pytest.raises(ConditionError, match="more than"):
        parse_dnf(text)
