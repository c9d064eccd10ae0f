"""The synthetic clickstream: deterministic, skewed, consistent with its dimensions."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from eventpipe.core.validation import EventLimits, validate_event
from eventpipe.demo.generator import HOUR_MICROS, DemoSpec, generate, to_json_line
from eventpipe.stack.demo import ANCHOR_FILE, demo_anchor_micros

NOW = 1_800_000_000_000_000
HOUR = HOUR_MICROS
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


# ---------------------------------------------------------------- `make up` loads the same set


def test_the_demo_anchor_chosen_at_the_first_load_is_kept_for_the_next_loads(
    tmp_path: Path,
) -> None:
    first, kept_first = demo_anchor_micros(tmp_path, emulator_pid=4242, now_micros=NOW)

    second, kept_second = demo_anchor_micros(tmp_path, emulator_pid=4242, now_micros=NOW + HOUR)

    assert (first, kept_first) == (NOW, False)
    assert (second, kept_second) == (NOW, True)


def test_two_loads_with_the_kept_anchor_send_the_same_events_and_dimension_versions(
    tmp_path: Path,
) -> None:
    loads = []
    for now in (NOW, NOW + 3 * HOUR):
        anchor, _kept = demo_anchor_micros(tmp_path, emulator_pid=None, now_micros=now)
        loads.append(generate(dataclasses.replace(SPEC, now_micros=anchor)))

    first, second = loads
    assert [to_json_line(e) for e in first.events] == [to_json_line(e) for e in second.events]
    assert [to_json_line(r) for r in first.users] == [to_json_line(r) for r in second.users]
    assert [to_json_line(r) for r in first.products] == [to_json_line(r) for r in second.products]


def test_a_new_emulator_holds_no_data_so_the_demo_gets_a_new_anchor(tmp_path: Path) -> None:
    demo_anchor_micros(tmp_path, emulator_pid=4242, now_micros=NOW)

    anchor, kept = demo_anchor_micros(tmp_path, emulator_pid=5151, now_micros=NOW + HOUR)

    assert (anchor, kept) == (NOW + HOUR, False)
    assert demo_anchor_micros(tmp_path, emulator_pid=5151, now_micros=NOW + 2 * HOUR) == (
        NOW + HOUR,
        True,
    )


def test_an_unreadable_anchor_file_is_replaced_by_a_new_anchor(tmp_path: Path) -> None:
    (tmp_path / ANCHOR_FILE).write_text("{not json")

    assert demo_anchor_micros(tmp_path, emulator_pid=None, now_micros=NOW) == (NOW, False)
    assert demo_anchor_micros(tmp_path, emulator_pid=None, now_micros=NOW + HOUR) == (NOW, True)


def test_the_anchor_is_a_whole_second(tmp_path: Path) -> None:
    anchor, _kept = demo_anchor_micros(tmp_path, emulator_pid=None, now_micros=NOW + 123_456)

    assert anchor == NOW
