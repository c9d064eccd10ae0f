"""Enrichment specs: the domain's plain spec type, validation with field-level violations, and
the checked form jobs run.

A spec is ``Spec`` (plain data: the servicer and the spec store convert the wire's
``EnrichmentSpec`` with ``enrich.adapters.spec_codec``); ``validate_spec`` returns a
``CheckedSpec`` (plain data, picklable, so Spark workers can use it) or raises
InvalidArgument naming every bad field, for example ``spec.derived_fields[0].expression``
(the paths are the wire's field names, which the plain type keeps).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from eventpipe.core.errors import InvalidArgument, Violation, describe
from eventpipe.core.validation import ATTRIBUTE_KEY_PATTERN, DIMENSION_NAME_PATTERN

from enrich.domain import expressions
from enrich.domain.expressions import ExpressionError, Node, ValueType

MAX_JOINS = 8
MAX_DERIVED = 32
MAX_METRIC_FIELDS = 16
MAX_JOIN_FIELDS = 64
# Every name rule is a whole-string match (fullmatch): with match() and "$", "users\n" passed.
_DIMENSION = DIMENSION_NAME_PATTERN
_FIELD = ATTRIBUTE_KEY_PATTERN
_DERIVED_NAME = DIMENSION_NAME_PATTERN
_DIMENSION_RULE = "must match [a-z][a-z0-9_]{0,63}"
_FIELD_RULE = "must match [A-Za-z][A-Za-z0-9_]{0,63}"
ENTITY_ID = "entity_id"
ATTRIBUTE_PREFIX = "attributes."
RESERVED_NAMES = frozenset({"entity_id", "event_type", "event_id", "event_time", "tenant_id"})


@dataclass
class Join:
    """Copies ``fields`` of the ``dimension`` record whose key is the event's ``key_field``
    ("entity_id" or "attributes.NAME"), as of the event's time."""

    dimension: str = ""
    key_field: str = ""
    fields: list[str] = field(default_factory=list)


@dataclass
class DerivedField:
    """A field computed from ``expression`` (enrich.domain.expressions)."""

    name: str = ""
    expression: str = ""


@dataclass
class Spec:
    """How a tenant's events are enriched, as asked (unchecked: see ``validate_spec``).
    ``version`` and ``create_micros`` are set when the spec is stored (0 / None before)."""

    joins: list[Join] = field(default_factory=list)
    derived_fields: list[DerivedField] = field(default_factory=list)
    metric_fields: list[str] = field(default_factory=list)
    version: int = 0
    create_micros: int | None = None

    def copy(self) -> Spec:
        return copy.deepcopy(self)


@dataclass(frozen=True)
class CheckedJoin:
    dimension: str
    # None joins on entity_id; otherwise the attribute holding the dimension key.
    key_attribute: str | None
    fields: tuple[str, ...]


@dataclass(frozen=True)
class CheckedDerived:
    name: str
    expression: str
    ast: Node
    value_type: ValueType


@dataclass(frozen=True)
class CheckedSpec:
    version: int
    joins: tuple[CheckedJoin, ...]
    derived: tuple[CheckedDerived, ...]
    metric_fields: tuple[str, ...]

    @property
    def joined_fields(self) -> list[str]:
        """Every "dimension.field" the joins add, in spec order."""
        return [f"{j.dimension}.{f}" for j in self.joins for f in j.fields]


def _check_joins(spec: Spec, violations: list[Violation]) -> list[CheckedJoin]:
    joins: list[CheckedJoin] = []
    if len(spec.joins) > MAX_JOINS:
        violations.append(Violation("spec.joins", f"at most {MAX_JOINS} joins"))
    seen: set[str] = set()
    for index, join in enumerate(spec.joins):
        path = f"spec.joins[{index}]"
        ok = True
        if not _DIMENSION.fullmatch(join.dimension):
            violations.append(Violation(f"{path}.dimension", _DIMENSION_RULE))
            ok = False
        elif join.dimension in seen:
            violations.append(Violation(f"{path}.dimension", "dimension joined twice"))
            ok = False
        seen.add(join.dimension)
        key_attribute: str | None = None
        if join.key_field == ENTITY_ID:
            key_attribute = None
        elif join.key_field.startswith(ATTRIBUTE_PREFIX) and _FIELD.fullmatch(
            join.key_field[len(ATTRIBUTE_PREFIX) :]
        ):
            key_attribute = join.key_field[len(ATTRIBUTE_PREFIX) :]
        else:
            violations.append(
                Violation(f"{path}.key_field", 'must be "entity_id" or "attributes.NAME"')
            )
            ok = False
        if not join.fields:
            violations.append(Violation(f"{path}.fields", "name at least one field to copy"))
            ok = False
        elif len(join.fields) > MAX_JOIN_FIELDS:
            violations.append(Violation(f"{path}.fields", f"at most {MAX_JOIN_FIELDS} fields"))
            ok = False
        for field_index, name in enumerate(join.fields):
            if not _FIELD.fullmatch(name):
                violations.append(Violation(f"{path}.fields[{field_index}]", _FIELD_RULE))
                ok = False
        if len(set(join.fields)) != len(join.fields):
            violations.append(Violation(f"{path}.fields", "a field is listed twice"))
            ok = False
        if ok:
            joins.append(CheckedJoin(join.dimension, key_attribute, tuple(join.fields)))
    return joins


def _check_derived(
    spec: Spec, joins: list[CheckedJoin], violations: list[Violation]
) -> list[CheckedDerived]:
    if len(spec.derived_fields) > MAX_DERIVED:
        violations.append(Violation("spec.derived_fields", f"at most {MAX_DERIVED} fields"))
    joined = {f"{j.dimension}.{name}" for j in joins for name in j.fields}
    joined_dimensions = {j.dimension for j in joins}
    types: dict[str, ValueType] = {}
    derived: list[CheckedDerived] = []
    for index, item in enumerate(spec.derived_fields):
        path = f"spec.derived_fields[{index}]"
        if not _DERIVED_NAME.fullmatch(item.name):
            violations.append(Violation(f"{path}.name", _DIMENSION_RULE))
            continue
        if item.name in RESERVED_NAMES or item.name in types:
            violations.append(Violation(f"{path}.name", "name is reserved or already used"))
            continue
        try:
            ast = expressions.parse(item.expression)
            for ref in sorted(expressions.field_refs(ast)):
                if "." in ref:
                    dimension = ref.split(".", 1)[0]
                    if ref not in joined:
                        reason = (
                            f"{ref!r} is not among the fields join {dimension!r} copies"
                            if dimension in joined_dimensions
                            else f"{ref!r} names no joined dimension"
                        )
                        raise ExpressionError(reason)
            value_type = expressions.infer_type(ast, types)
        except ExpressionError as exc:
            violations.append(Violation(f"{path}.expression", str(exc)))
            continue
        types[item.name] = value_type
        derived.append(CheckedDerived(item.name, item.expression, ast, value_type))
    return derived


def _check_metrics(
    spec: Spec,
    joins: list[CheckedJoin],
    derived: list[CheckedDerived],
    violations: list[Violation],
) -> list[str]:
    if len(spec.metric_fields) > MAX_METRIC_FIELDS:
        violations.append(Violation("spec.metric_fields", f"at most {MAX_METRIC_FIELDS} fields"))
    joined = {f"{j.dimension}.{name}" for j in joins for name in j.fields}
    derived_types = {d.name: d.value_type for d in derived}
    fields: list[str] = []
    for index, name in enumerate(spec.metric_fields):
        path = f"spec.metric_fields[{index}]"
        if "." in name:
            if name not in joined:
                violations.append(Violation(path, f"{name!r} is not a joined field"))
                continue
        elif not _FIELD.fullmatch(name) or name in RESERVED_NAMES:
            violations.append(Violation(path, "must name a numeric attribute or field"))
            continue
        if derived_types.get(name) is ValueType.STRING:
            violations.append(Violation(path, f"derived field {name!r} is a string"))
            continue
        if name in fields:
            violations.append(Violation(path, "listed twice"))
            continue
        fields.append(name)
    return fields


def validate_spec(spec: Spec, version: int = 0) -> CheckedSpec:
    """Checks every rule; raises InvalidArgument listing all violations at once."""
    violations: list[Violation] = []
    joins = _check_joins(spec, violations)
    derived = _check_derived(spec, joins, violations)
    metric_fields = _check_metrics(spec, joins, derived, violations)
    if violations:
        raise InvalidArgument(
            f"invalid enrichment spec: {describe(violations, limit=3)}", violations=violations
        )
    return CheckedSpec(
        version=version,
        joins=tuple(joins),
        derived=tuple(derived),
        metric_fields=tuple(metric_fields),
    )
