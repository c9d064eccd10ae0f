"""The derived-field language: what parses, what is refused, and how values combine."""

from __future__ import annotations

import re

import pytest
from enrich.domain import expressions
from enrich.domain.expressions import BinaryOp, ExpressionError, FieldRef, Number, ValueType


def test_arithmetic_respects_precedence_and_parentheses() -> None:
    assert expressions.parse("a + b * 2") == BinaryOp(
        "+", FieldRef("a"), BinaryOp("*", FieldRef("b"), Number(2.0))
    )
    assert expressions.parse("(a + b) * 2") == BinaryOp(
        "*", BinaryOp("+", FieldRef("a"), FieldRef("b")), Number(2.0)
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("reflect('java.lang.Runtime','exec','x')", "function calls are not allowed"),
        ("java_method('a', 'b')", "function calls are not allowed"),
        ("abs(x)", "function calls are not allowed"),
        ("1; DROP TABLE x", "unexpected character ';'"),
        ("`quantity`", "unexpected character '`'"),
        ('"price"', "unexpected character '\"'"),
        ("a || b", "unexpected character '|'"),
        ("a = 1", "unexpected character '='"),
        ("a b", "unexpected 'b'"),
        ("(a + b", "unexpected end"),
        ("a.b.c", "unexpected character '.'"),
        ("", "empty"),
    ],
)
def test_anything_outside_the_grammar_is_refused_with_a_reason(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(reason)):
        expressions.parse(source)


def test_a_quote_inside_a_string_is_written_twice() -> None:
    assert expressions.evaluate(expressions.parse("'it''s'"), lambda _n: None) == "it's"


def test_plus_concatenates_when_a_side_is_text_and_prints_whole_numbers_without_fraction() -> None:
    values = {"quantity": 3.0, "category": "books"}
    node = expressions.parse("category + '/' + quantity + '/' + 2.5")
    assert expressions.evaluate(node, values.get) == "books/3/2.5"


def test_division_by_zero_and_missing_fields_give_null() -> None:
    assert expressions.evaluate(expressions.parse("1 / (a - a)"), {"a": 2.0}.get) is None
    assert expressions.evaluate(expressions.parse("a * 2"), {}.get) is None
    assert expressions.evaluate(expressions.parse("'x' * 2"), {}.get) is None


def test_types_are_inferred_and_string_arithmetic_is_refused() -> None:
    assert expressions.infer_type(expressions.parse("a * 2"), {}) is ValueType.NUMBER
    assert expressions.infer_type(expressions.parse("a + 'x'"), {}) is ValueType.STRING
    assert expressions.infer_type(expressions.parse("a + b"), {}) is ValueType.ANY
    with pytest.raises(ExpressionError, match="needs numbers"):
        expressions.infer_type(expressions.parse("'x' - 1"), {})
    with pytest.raises(ExpressionError, match="needs numbers"):
        expressions.infer_type(expressions.parse("event_type * 2"), {})


def test_an_oversized_expression_is_refused() -> None:
    with pytest.raises(ExpressionError, match="more than"):
        expressions.parse(" + ".join(["a"] * 100))
