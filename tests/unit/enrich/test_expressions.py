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


def test_deep_nesting_is_refused_with_a_reason_not_a_recursion_error() -> None:
    for source in ("(" * 511 + "a" + ")" * 511, "-" * 200 + "a", "(" * 511):
        with pytest.raises(ExpressionError, match="nesting deeper than 32 levels"):
            expressions.parse(source)


def test_nesting_up_to_the_limit_parses() -> None:
    depth = expressions.MAX_DEPTH
    assert expressions.parse("(" * depth + "a" + ")" * depth) == FieldRef("a")
    with pytest.raises(ExpressionError, match="nesting deeper"):
        expressions.parse("(" * (depth + 1) + "a" + ")" * (depth + 1))


def test_a_chain_of_31_operators_is_within_the_node_limit_and_32_is_not() -> None:
    node = expressions.parse(" + ".join(["a"] * 32))
    assert isinstance(node, BinaryOp)
    with pytest.raises(ExpressionError, match=f"more than {expressions.MAX_NODES} elements"):
        expressions.parse(" + ".join(["a"] * 34))


def test_a_number_literal_that_is_not_a_finite_double_is_refused() -> None:
    with pytest.raises(ExpressionError, match="out of range"):
        expressions.parse("a * 1e999")
    with pytest.raises(ExpressionError, match="out of range"):
        expressions.parse("9" * 400)
    assert expressions.parse("1.7e308") == Number(1.7e308)


@pytest.mark.parametrize(
    "source",
    ["a + b", "a * b", "a - -b", "(a + b) + 'x'", "'x' + a * b", "1 / (1 / (a * b))", "-(a * b)"],
)
def test_a_step_that_is_not_finite_makes_the_whole_result_null(source: str) -> None:
    values = {"a": 1.7e308, "b": 1.7e308}
    assert expressions.evaluate(expressions.parse(source), values.get) is None


def test_unary_minus_of_a_string_is_null() -> None:
    assert expressions.evaluate(expressions.parse("-a"), {"a": "x"}.get) is None
