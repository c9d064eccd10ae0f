"""The derived-field expression language: parsed here into an AST, never handed to Spark SQL.

Grammar (whitespace between tokens is ignored)::

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | STRING | FIELD | '(' expr ')' | '-' factor
    NUMBER := digits with an optional fraction and exponent, e.g. 3, 2.5, 1e3
    STRING := '...' (a doubled '' stands for one quote)
    FIELD  := NAME | NAME '.' NAME        NAME := [A-Za-z][A-Za-z0-9_]{0,63}

Anything else (function calls, backticks, semicolons, double quotes, comparison operators)
is a syntax error at a stated position. Limits, each a refusal with a reason, never a crash:
at most MAX_EXPRESSION_LENGTH characters, MAX_NODES elements (numbers, strings, fields and
operators), parentheses and unary minus nested at most MAX_DEPTH deep, and number literals
must be finite doubles (``1e999`` is refused). The AST is compiled to Spark ``Column`` objects by
``enrich.adapters.spark_expressions`` and evaluated in plain Python by ``evaluate`` (the
independent reference the tests use, and the streaming fallback); both follow the same rules:

- a field reads as a number when it is stored as int or double, as a string when stored as a
  string (bool and timestamp attributes read as null);
- ``+`` adds two numbers, or concatenates when either side is a string (numbers print as
  ``3`` or ``2.5``);
- ``- * /`` need numbers, otherwise the result is null; division by zero gives null;
- null (a missing field) makes the whole result null;
- a step whose result is not a finite number (overflow past +-1.8e308) makes the whole result
  null too: the value is absent from the output and counted (see docs/enrich.md, "Overflow").
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

MAX_EXPRESSION_LENGTH = 1024
MAX_NODES = 64
MAX_DEPTH = 32
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_]{0,63}"
_TOKEN = re.compile(
    rf"""(?P<ws>\s+)
       |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
       |(?P<string>'(?:[^']|'')*')
       |(?P<field>{NAME_PATTERN}(?:\.{NAME_PATTERN})?)
       |(?P<op>[-+*/()])""",
    re.VERBOSE,
)


class ExpressionError(ValueError):
    """The expression is not in the language; the message says where and why."""


class ValueType(Enum):
    NUMBER = "number"
    STRING = "string"
    ANY = "any"  # a field: number or string, known only per row


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class String:
    value: str


@dataclass(frozen=True)
class FieldRef:
    """``name`` is an attribute, ``entity_id``, ``event_type``, or ``dimension.field``."""

    name: str


@dataclass(frozen=True)
class Negate:
    operand: Node


@dataclass(frozen=True)
class BinaryOp:
    op: str
    left: Node
    right: Node


Node = Number | String | FieldRef | Negate | BinaryOp


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _refuse_calls(tokens: list[_Token]) -> None:
    """Names the real problem when a call such as reflect('x', 'y') breaks tokenizing."""
    for before, after in itertools.pairwise(tokens):
        if before.kind == "field" and after.text == "(":
            raise ExpressionError(
                f"function calls are not allowed: {before.text!r} at position {before.position}"
            )


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            _refuse_calls(tokens)
            char = source[position]
            raise ExpressionError(f"unexpected character {char!r} at position {position}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Token(kind, match.group(), position))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token], source: str) -> None:
        self.tokens = tokens
        self.index = 0
        self.source = source
        self.nodes = 0
        self.depth = 0

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self) -> _Token:
        token = self._peek()
        if token is None:
            raise ExpressionError("unexpected end of expression")
        self.index += 1
        return token

    def _count(self, node: Node) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExpressionError(f"expression has more than {MAX_NODES} elements")
        return node

    def expression(self) -> Node:
        node = self.term()
        while (token := self._peek()) is not None and token.text in "+-" and token.kind == "op":
            self._take()
            node = self._count(BinaryOp(token.text, node, self.term()))
        return node

    def term(self) -> Node:
        node = self.factor()
        while (token := self._peek()) is not None and token.text in "*/" and token.kind == "op":
            self._take()
            node = self._count(BinaryOp(token.text, node, self.factor()))
        return node

    def _nest(self, token: _Token) -> None:
        """Bounds the recursion: each '(' and unary '-' goes one level deeper."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(
                f"nesting deeper than {MAX_DEPTH} levels at position {token.position}"
            )

    def factor(self) -> Node:
        token = self._take()
        if token.kind == "number":
            value = float(token.text)
            if not math.isfinite(value):
                raise ExpressionError(
                    f"number {token.text[:32]!r} at position {token.position} is out of range"
                )
            return self._count(Number(value))
        if token.kind == "string":
            return self._count(String(token.text[1:-1].replace("''", "'")))
        if token.kind == "field":
            following = self._peek()
            if following is not None and following.text == "(":
                raise ExpressionError(
                    f"function calls are not allowed: {token.text!r} at position {token.position}"
                )
            return self._count(FieldRef(token.text))
        if token.text == "(":
            self._nest(token)
            node = self.expression()
            closing = self._take()
            if closing.text != ")":
                raise ExpressionError(f"expected ')' at position {closing.position}")
            self.depth -= 1
            return node
        if token.text == "-":
            self._nest(token)
            node = self._count(Negate(self.factor()))
            self.depth -= 1
            return node
        raise ExpressionError(f"unexpected {token.text!r} at position {token.position}")


def parse(source: str) -> Node:
    """Parses an expression; raises ExpressionError naming the offending position."""
    if not source.strip():
        raise ExpressionError("expression is empty")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    parser = _Parser(_tokenize(source), source)
    node = parser.expression()
    leftover = parser._peek()
    if leftover is not None:
        raise ExpressionError(f"unexpected {leftover.text!r} at position {leftover.position}")
    return node


def field_refs(node: Node) -> set[str]:
    """Every field the expression reads."""
    if isinstance(node, FieldRef):
        return {node.name}
    if isinstance(node, Negate):
        return field_refs(node.operand)
    if isinstance(node, BinaryOp):
        return field_refs(node.left) | field_refs(node.right)
    return set()


STRING_FIELDS = frozenset({"entity_id", "event_type"})


def infer_type(node: Node, field_types: Mapping[str, ValueType]) -> ValueType:
    """The static result type; fields absent from ``field_types`` are ANY.

    Raises ExpressionError when ``- * /`` or unary minus meet a value that is surely a string.
    """
    if isinstance(node, Number):
        return ValueType.NUMBER
    if isinstance(node, String):
        return ValueType.STRING
    if isinstance(node, FieldRef):
        if node.name in STRING_FIELDS:
            return ValueType.STRING
        return field_types.get(node.name, ValueType.ANY)
    if isinstance(node, Negate):
        if infer_type(node.operand, field_types) is ValueType.STRING:
            raise ExpressionError("unary '-' needs a number")
        return ValueType.NUMBER
    left = infer_type(node.left, field_types)
    right = infer_type(node.right, field_types)
    if ValueType.STRING in (left, right):
        if node.op != "+":
            raise ExpressionError(f"'{node.op}' needs numbers; only '+' joins strings")
        return ValueType.STRING
    if node.op == "+" and ValueType.ANY in (left, right):
        return ValueType.ANY
    return ValueType.NUMBER


Value = float | str | None


def format_number(value: float) -> str:
    """How a number reads inside a concatenated string: 3.0 -> "3", 2.5 -> "2.5"."""
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def evaluate(node: Node, lookup: Callable[[str], Value]) -> Value:
    """Evaluates in plain Python; numeric fields must already be (finite) floats.

    Python's float arithmetic gives inf and nan where Spark's does, and a non-finite step
    gives None here, as the compiled Spark columns do."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, String):
        return node.value
    if isinstance(node, FieldRef):
        return lookup(node.name)
    if isinstance(node, Negate):
        operand = evaluate(node.operand, lookup)
        return -operand if isinstance(operand, float) else None
    left = evaluate(node.left, lookup)
    right = evaluate(node.right, lookup)
    if left is None or right is None:
        return None
    if node.op == "+" and (isinstance(left, str) or isinstance(right, str)):
        as_text = [v if isinstance(v, str) else format_number(v) for v in (left, right)]
        return as_text[0] + as_text[1]
    if isinstance(left, str) or isinstance(right, str):
        return None
    if node.op == "+":
        result = left + right
    elif node.op == "-":
        result = left - right
    elif node.op == "*":
        result = left * right
    elif right == 0:
        return None
    else:
        result = left / right
    return result if math.isfinite(result) else None
