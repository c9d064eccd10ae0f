"""Compiles the expression AST (enrich.domain.expressions) to Spark Column objects.

Only Column arithmetic, literals, map lookups and one higher-order function (``transform``,
used as a let-binding) are built here: no string is ever handed to Spark's SQL parser (no
``expr()``, ``selectExpr`` or ``sql()``), so nothing a client writes can reach functions such
as ``reflect`` or ``java_method``.

Each value is a pair of columns (number, string) of which at most one is non-null, which is
how a field that is an int in one event and a string in another keeps the language's rules.

Plan size. A Spark Column is an expression tree: a column used twice is copied twice. The
rules of ``+`` read each operand several times (is it a number? a string? how does it
print?), so copying operands per operator made the plan grow as 2^n with n operators (a
31-operator chain never finished planning). Here every AST node is compiled once and each
compiled node is referenced by its parent once:

- ``- * /``, unary minus and ``+`` of two numbers read each operand's number once;
- where an operand must be read more than once (``+`` of values that may be strings, the
  divisor's finiteness check) and is not a leaf, the operands are bound once as the
  argument of ``transform(array(struct(...)), lambda)`` and read any number of times inside
  the lambda as lambda variables. Leaves (fields, literals) are small, and copied instead:
  bindings are not code-generated, so the common ``quantity * products.price`` stays fast.

The plan therefore grows linearly with the expression (tests/integration/enrich/
test_spec_abuse.py measures it).

Overflow. A step whose result is not finite (``1.7e308 + 1.7e308``, ``inf - inf``) makes the
value null, like a missing field: through ``+ - *`` a non-finite number stays non-finite, so
only the places where it could turn finite or into text are checked (a divisor, a number
printed for concatenation) and the final result. ``ValueColumns.non_finite`` tells when the
final result was nulled for that reason, so the caller can count it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import Column
from pyspark.sql import functions as F

from enrich.domain.expressions import BinaryOp, FieldRef, Negate, Node, Number, String, ValueType

_EXACT_INT_LIMIT = float(2**53)
_MAX_DOUBLE = sys.float_info.max


def null_double() -> Column:
    return F.lit(None).cast("double")


def null_string() -> Column:
    return F.lit(None).cast("string")


def finite_or_null(number: Column) -> Column:
    """``number`` when finite, else null (Spark orders NaN above every number)."""
    return F.when(F.abs(number) <= F.lit(_MAX_DOUBLE), number)


def _printed(number: Column) -> Column:
    """A number as it reads inside a concatenated string: 3.0 -> "3", 2.5 -> "2.5"; null
    when not finite (reads ``number`` several times: pass a small column)."""
    finite = F.abs(number) <= F.lit(_MAX_DOUBLE)
    whole = (F.floor(number) == number) & (F.abs(number) < _EXACT_INT_LIMIT)
    return F.when(
        finite, F.when(whole, number.cast("long").cast("string")).otherwise(number.cast("string"))
    )


@dataclass(frozen=True)
class ValueColumns:
    """A value of the language in Spark: ``number`` (double) or ``text`` (string).

    ``kind`` is what the value can be (ANY: a number or a string, known per row).
    ``non_finite`` is true where the result was nulled because it was not a finite number.
    """

    number: Column
    text: Column
    kind: ValueType = ValueType.ANY
    non_finite: Column = field(default_factory=lambda: F.lit(False))

    def as_text(self) -> Column:
        """The value printed for concatenation (reads ``number`` several times)."""
        return _as_text(self.number, self.text)


def _as_text(number: Column, text: Column) -> Column:
    return F.coalesce(text, _printed(number))


Resolver = Callable[[str], ValueColumns]


@dataclass(frozen=True)
class _Value:
    """A compiled node. Unless ``small``, ``number`` and ``text`` each hold the node's
    operands at most once between them, so the parent may read each of them once; ``packed``
    is set when both are fields of one struct column (a binding), which is then what a
    parent that needs both reads."""

    kind: ValueType
    number: Column
    text: Column
    small: bool = False
    packed: Column | None = None

    def as_struct(self) -> Column:
        if self.packed is not None:
            return self.packed
        return F.struct(self.number.alias("n"), self.text.alias("t"))

    def as_text(self) -> Column:
        if self.kind is ValueType.STRING:
            return self.text
        if self.kind is ValueType.NUMBER:
            return _printed(self.number)
        return _as_text(self.number, self.text)


def _packed(kind: ValueType, struct: Column) -> _Value:
    return _Value(kind, struct["n"], struct["t"], packed=struct)


def _bind_number(value: _Value, body: Callable[[Column], Column]) -> Column:
    """``body(value.number)`` with the number evaluated once (copied when small)."""
    if value.small:
        return body(value.number)
    return F.transform(F.array(value.number), body).getItem(0)


def _plus(left: _Value, right: _Value) -> tuple[Column, Column]:
    """``+`` of values that may be strings, as (number, text); reads operands several times."""
    if ValueType.STRING in (left.kind, right.kind):
        # A string side is never a number, so the result is text when both sides are present.
        return null_double(), F.concat(left.as_text(), right.as_text())
    any_text = left.text.isNotNull() | right.text.isNotNull()
    return left.number + right.number, F.when(any_text, F.concat(left.as_text(), right.as_text()))


def _struct(number: Column, text: Column) -> Column:
    return F.struct(number.alias("n"), text.alias("t"))


def _plus_kind(left: ValueType, right: ValueType) -> ValueType:
    if left is ValueType.NUMBER and right is ValueType.NUMBER:
        return ValueType.NUMBER
    if ValueType.STRING in (left, right):
        return ValueType.STRING
    return ValueType.ANY


def _summands(node: Node) -> list[Node]:
    """The operands of a left-leaning run of '+': a + b + c -> [a, b, c]."""
    operands: list[Node] = []
    while isinstance(node, BinaryOp) and node.op == "+":
        operands.append(node.right)
        node = node.left
    operands.append(node)
    return operands[::-1]


def _inlinable(left: _Value, right: _Value) -> bool:
    """Whether ``left + right`` reads each operand that is not a leaf only once."""
    if left.kind is ValueType.NUMBER and right.kind is ValueType.NUMBER:
        return True
    return all(v.small or v.kind is ValueType.STRING for v in (left, right))


def _merge(accumulated: Column, operand: Column) -> Column:
    """One step of a folded sum, on lambda variables (read freely: they are small)."""
    left = _Value(ValueType.ANY, accumulated["n"], accumulated["t"], small=True)
    right = _Value(ValueType.ANY, operand["n"], operand["t"], small=True)
    return _struct(*_plus(left, right))


def _compile_sum(node: BinaryOp, resolve: Resolver) -> _Value:
    """A run of '+' (the parser builds a + b + c as (a + b) + c).

    Steps that read no operand twice stay plain columns (code-generated, the common case:
    numbers, or text joined to leaves). From the first step that would read a compiled
    operand several times, the rest of the run is one ``aggregate`` over an array of the
    operands: each operand is in the plan once, and the merge lambda reads its lambda
    variables as often as the language's rules for '+' need.
    """
    values = [_compile(operand, resolve) for operand in _summands(node)]
    total = values[0]
    for index, value in enumerate(values[1:], start=1):
        kind = _plus_kind(total.kind, value.kind)
        if not _inlinable(total, value):
            for rest in values[index + 1 :]:
                kind = _plus_kind(kind, rest.kind)
            operands = F.array(*[v.as_struct() for v in values[index:]])
            return _packed(kind, F.aggregate(operands, total.as_struct(), _merge))
        if kind is ValueType.NUMBER:
            total = _Value(kind, total.number + value.number, null_string())
        else:
            total = _Value(kind, *_plus(total, value))
    return total


def _compile(node: Node, resolve: Resolver) -> _Value:
    if isinstance(node, Number):
        return _Value(ValueType.NUMBER, F.lit(node.value).cast("double"), null_string(), True)
    if isinstance(node, String):
        return _Value(ValueType.STRING, null_double(), F.lit(node.value), True)
    if isinstance(node, FieldRef):
        resolved = resolve(node.name)
        return _Value(resolved.kind, resolved.number, resolved.text, small=True)
    if isinstance(node, Negate):
        operand = _compile(node.operand, resolve)
        return _Value(ValueType.NUMBER, -operand.number, null_string())
    if isinstance(node, BinaryOp):
        if node.op == "+":
            return _compile_sum(node, resolve)
        left = _compile(node.left, resolve)
        right = _compile(node.right, resolve)
        # Spark's arithmetic is null when an operand is null, and a string side has a null
        # number: the language's "numbers only, else null" needs no test of its own.
        if node.op == "-":
            number = left.number - right.number
        elif node.op == "/":
            # try_divide: null for a zero divisor (plain / raises under ANSI mode); a
            # non-finite divisor would turn an overflow into 0, so it is null as well.
            number = F.try_divide(left.number, _bind_number(right, finite_or_null))
        else:
            number = left.number * right.number
        return _Value(ValueType.NUMBER, number, null_string())
    raise TypeError(f"not an expression node: {node!r}")


def compile_expression(node: Node, resolve: Resolver) -> ValueColumns:
    """The columns of ``node``'s value; ``resolve`` gives the columns of a field by name.

    The result's number is null where not finite (``non_finite`` then is true).
    """
    resolved: dict[str, ValueColumns] = {}

    def resolve_once(name: str) -> ValueColumns:
        # The same Column object may appear in many places; building it once saves the
        # JVM round trips of building it again.
        if name not in resolved:
            resolved[name] = resolve(name)
        return resolved[name]

    value = _compile(node, resolve_once)
    if value.kind is ValueType.STRING:
        return ValueColumns(null_double(), value.text, ValueType.STRING)
    if value.packed is None:
        # Plain arithmetic: reading the number a few times is a constant factor, and it
        # keeps the common case free of lambdas (which Spark does not code-generate).
        number = value.number
        return ValueColumns(finite_or_null(number), value.text, value.kind, _non_finite(number))

    def checked(packed: Column) -> Column:
        number = packed["n"]
        return F.struct(
            finite_or_null(number).alias("n"),
            packed["t"].alias("t"),
            _non_finite(number).alias("x"),
        )

    result = F.transform(F.array(value.packed), checked).getItem(0)
    return ValueColumns(result["n"], result["t"], value.kind, result["x"])


def _non_finite(number: Column) -> Column:
    return number.isNotNull() & ~(F.abs(number) <= F.lit(_MAX_DOUBLE))
