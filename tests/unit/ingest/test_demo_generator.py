"""The synthetic clickstream: deterministic, skewed, consistent with its dimensions."""

from __future__ import annotations

from collections import Counter

from eventpipe.core.validation import EventLimits, validate_event
from eventpipe.demo.generator import DemoSpec, generate, to_json_line

NOW = 1_800_000_000_000_000
SPEC = DemoSpec(users=50, products=20, sessions=200, days=3, seed=5, now_micros=NOW)


def test_the_same_seed_gives_the_same_data() -> None:
    first, second = generate(SPEC), generate(SPEC)
    assert [to_json_line(e) for e in first.events] == [to_json_line(e) for e in second.events]
    assert [to_json_line(r) for r in first.users] == [to_json_line(r) for r in second.users]


def test_events_are_valid_and_reference_known_users_and_products() -> None:
    data = generate(SPEC)
    users = {r.key for r in data.users}
    products = {r.key for r in data.products}
    for event in data.events:
        event.tenant_id = "demo"
        assert validate_event(event, NOW, EventLimits()) == []
        assert event.entity_id in users
        if "product_id" in event.attributes:
            assert event.attributes["product_id"].string_value in products
    types = Counter(e.event_type for e in data.events)
    assert set(types) == {"page_view", "add_to_cart", "purchase"}
    assert all(
        e.attributes["quantity"].int_value >= 1 for e in data.events if e.event_type != "page_view"
    )


def test_activity_is_skewed_and_some_dimension_records_have_several_versions() -> None:
    data = generate(SPEC)
    per_user = Counter(e.entity_id for e in data.events).most_common()
    assert per_user[0][1] > 5 * per_user[len(per_user) // 2][1]
    assert any(n > 1 for n in Counter(r.key for r in data.users).values())
    assert any(n > 1 for n in Counter(r.key for r in data.products).values())
