"""Compiles the expression AST (enrich.domain.expressions) to Spark Column objects.

Only Column arithmetic, literals and map lookups are built here: no string is ever handed to
Spark's SQL parser (no ``expr()``, ``selectExpr`` or ``sql()``), so nothing a client writes
can reach functions such as ``reflect`` or ``java_method``.

Each value is a pair of columns (number, string) of which at most one is non-null, which is
how a field that is an int in one event and a string in another keeps the language's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from enrich.domain.expressions import BinaryOp, FieldRef, Negate, Node, Number, String

_EXACT_INT_LIMIT = float(2**53)


@dataclass(frozen=True)
class ValueColumns:
    """A value of the language in Spark: ``number`` (double) or ``text`` (string)."""

    number: Column
    text: Column

    def as_text(self) -> Column:
        """The value printed for concatenation: 3.0 -> "3", 2.5 -> "2.5"."""
        whole = (F.floor(self.number) == self.number) & (F.abs(self.number) < _EXACT_INT_LIMIT)
        printed = F.when(whole, self.number.cast("long").cast("string")).otherwise(
            self.number.cast("string")
        )
        return F.coalesce(self.text, printed)


def null_double() -> Column:
    return F.lit(None).cast("double")


def null_string() -> Column:
    return F.lit(None).cast("string")


Resolver = Callable[[str], ValueColumns]


def compile_expression(node: Node, resolve: Resolver) -> ValueColumns:
    if isinstance(node, Number):
        return ValueColumns(F.lit(node.value).cast("double"), null_string())
    if isinstance(node, String):
        return ValueColumns(null_double(), F.lit(node.value))
    if isinstance(node, FieldRef):
        return resolve(node.name)
    if isinstance(node, Negate):
        operand = compile_expression(node.operand, resolve)
        return ValueColumns(-operand.number, null_string())
    if isinstance(node, BinaryOp):
        left = compile_expression(node.left, resolve)
        right = compile_expression(node.right, resolve)
        both_numbers = left.number.isNotNull() & right.number.isNotNull()
        if node.op == "+":
            number = F.when(both_numbers, left.number + right.number)
            any_text = left.text.isNotNull() | right.text.isNotNull()
            both_present = (left.number.isNotNull() | left.text.isNotNull()) & (
                right.number.isNotNull() | right.text.isNotNull()
            )
            text = F.when(any_text & both_present, F.concat(left.as_text(), right.as_text()))
            return ValueColumns(number, text)
        if node.op == "-":
            return ValueColumns(F.when(both_numbers, left.number - right.number), null_string())
        if node.op == "*":
            return ValueColumns(F.when(both_numbers, left.number * right.number), null_string())
        if node.op == "/":
            return ValueColumns(
                F.when(both_numbers & (right.number != 0), left.number / right.number),
                null_string(),
            )
    raise TypeError(f"not an expression node: {node!r}")
