"""Spec validation on the domain's plain spec type: every bad field is named, good specs come back
checked."""

from __future__ import annotations

import pytest
from enrich.domain.expressions import ValueType
from enrich.domain.spec import DerivedField, Join, Spec, validate_spec
from eventpipe.core.errors import InvalidArgument


def good_spec() -> Spec:
    return Spec(
        joins=[
            Join(dimension="products", key_field="attributes.product_id", fields=["price"]),
            Join(dimension="users", key_field="entity_id", fields=["tier"]),
        ],
        derived_fields=[
            DerivedField(name="revenue", expression="quantity * products.price"),
            DerivedField(name="tag", expression="users.tier + '!'"),
        ],
        metric_fields=["quantity", "revenue", "products.price"],
    )


def violations(spec: Spec) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        validate_spec(spec)
    return {v.field: v.description for v in raised.value.violations}


def test_a_good_spec_is_checked_with_its_joins_and_types() -> None:
    checked = validate_spec(good_spec(), version=3)
    assert checked.version == 3
    assert checked.joins[0].key_attribute == "product_id"
    assert checked.joins[1].key_attribute is None
    assert [d.value_type for d in checked.derived] == [ValueType.NUMBER, ValueType.STRING]
    assert checked.joined_fields == ["products.price", "users.tier"]


def test_join_mistakes_are_reported_per_field() -> None:
    spec = good_spec()
    spec.joins.append(Join(dimension="products", key_field="x", fields=["a", "a"]))
    found = violations(spec)
    assert set(found) == {
        "spec.joins[2].dimension",
        "spec.joins[2].key_field",
        "spec.joins[2].fields",
    }
    assert "twice" in found["spec.joins[2].dimension"]


def test_an_expression_may_only_read_fields_a_join_copies() -> None:
    spec = good_spec()
    spec.derived_fields.append(DerivedField(name="x", expression="products.cost"))
    spec.derived_fields.append(DerivedField(name="y", expression="shops.size"))
    found = violations(spec)
    assert "not among the fields" in found["spec.derived_fields[2].expression"]
    assert "names no joined dimension" in found["spec.derived_fields[3].expression"]


def test_metric_fields_must_be_numeric_and_known() -> None:
    spec = good_spec()
    spec.metric_fields.extend(["tag", "shops.size", "quantity", "entity_id"])
    found = violations(spec)
    assert set(found) == {
        "spec.metric_fields[3]",
        "spec.metric_fields[4]",
        "spec.metric_fields[5]",
        "spec.metric_fields[6]",
    }


def test_derived_names_are_unique_and_not_reserved() -> None:
    spec = good_spec()
    spec.derived_fields.append(DerivedField(name="revenue", expression="1"))
    spec.derived_fields.append(DerivedField(name="event_type", expression="1"))
    spec.derived_fields.append(DerivedField(name="Bad", expression="1"))
    assert set(violations(spec)) == {
        "spec.derived_fields[2].name",
        "spec.derived_fields[3].name",
        "spec.derived_fields[4].name",
    }


@pytest.mark.parametrize("name", ["users\n", "users\r\n", "\nusers", "us ers", ""])
def test_every_name_rule_matches_the_whole_name(name: str) -> None:
    spec = good_spec()
    spec.joins.append(Join(dimension=name, key_field=f"attributes.{name}", fields=[name]))
    spec.derived_fields.append(DerivedField(name=name, expression="1"))
    spec.metric_fields.append(name)
    found = violations(spec)
    assert {
        "spec.joins[2].dimension",
        "spec.joins[2].key_field",
        "spec.joins[2].fields[0]",
        "spec.derived_fields[2].name",
        "spec.metric_fields[3]",
    } <= set(found)


def test_a_field_name_with_a_trailing_newline_is_refused_where_the_clean_one_passes() -> None:
    spec = good_spec()
    spec.joins[0].fields.append("category\n")
    assert "must match" in violations(spec)["spec.joins[0].fields[1]"]
    spec.joins[0].fields[1] = "category"
    assert validate_spec(spec).joins[0].fields == ("price", "category")


def test_511_nested_parentheses_are_a_violation_of_the_expression_field() -> None:
    spec = good_spec()
    spec.derived_fields.append(DerivedField(name="deep", expression="(" * 511 + "a" + ")" * 511))
    found = violations(spec)
    assert set(found) == {"spec.derived_fields[2].expression"}
    assert "nesting deeper than 32 levels" in found["spec.derived_fields[2].expression"]
