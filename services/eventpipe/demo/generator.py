"""A deterministic synthetic commerce clickstream, with the dimension data it references.

Users have skewed activity (Zipf-like: the rank-r user is picked with weight 1/r^1.1), browse in
sessions of page views, put products in the cart with a quantity and sometimes buy. Users and
products are dimension records; some have several versions (``valid_from``): users change tier,
products change price, so point-in-time enrichment has something to get right.

Everything derives from ``seed`` and ``now``: the same arguments give byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.times import timestamp_from_micros
from eventpipe.store.v1 import store_pb2

HOUR_MICROS = 3_600_000_000
DAY_MICROS = 24 * HOUR_MICROS
COUNTRIES = ("DE", "FR", "US", "GB", "NL", "ES", "IT", "PL")
CHANNELS = ("organic", "ads", "referral", "email")
TIERS = ("free", "plus", "premium")
CATEGORIES = ("shoes", "shirts", "bags", "hats", "books", "toys", "kitchen", "garden")
BRANDS = ("acme", "globex", "initech", "umbrella", "hooli", "stark")
PAGES = ("/", "/search", "/category", "/deals", "/help")


@dataclass(frozen=True)
class DemoSpec:
    """Sizes and the time window of one data set."""

    users: int = 200
    products: int = 60
    sessions: int = 1000
    days: int = 7
    seed: int = 42
    # End of the window, microseconds since the epoch; events fall in [now - days, now - 1 min].
    now_micros: int = 0


@dataclass
class DemoData:
    events: list[event_pb2.Event]
    users: list[store_pb2.DimensionRecord]
    products: list[store_pb2.DimensionRecord]


def _set(attributes: Any, key: str, value: object) -> None:
    slot = attributes[key]
    if isinstance(value, bool):
        slot.bool_value = value
    elif isinstance(value, int):
        slot.int_value = value
    elif isinstance(value, float):
        slot.double_value = value
    else:
        slot.string_value = str(value)


def _record(key: str, valid_from: int, **attributes: object) -> store_pb2.DimensionRecord:
    record = store_pb2.DimensionRecord(key=key, valid_from=timestamp_from_micros(valid_from))
    for name, value in attributes.items():
        _set(record.attributes, name, value)
    return record


def _zipf_weights(count: int, exponent: float = 1.1) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, count + 1)]


def generate(spec: DemoSpec) -> DemoData:
    """Builds the data set; see the module docstring for its shape."""
    rng = random.Random(spec.seed)
    start = spec.now_micros - spec.days * DAY_MICROS
    # Dimension versions start before the first event, so every event has a valid version.
    history = start - 30 * DAY_MICROS

    users: list[store_pb2.DimensionRecord] = []
    user_ids = [f"user-{n:05d}" for n in range(1, spec.users + 1)]
    for user_id in user_ids:
        country, channel = rng.choice(COUNTRIES), rng.choice(CHANNELS)
        users.append(
            _record(user_id, history, country=country, signup_channel=channel, tier="free")
        )
        if rng.random() < 0.25:  # an upgrade during the window: a second version
            upgraded = start + rng.randrange(spec.days * DAY_MICROS)
            users.append(
                _record(
                    user_id,
                    upgraded,
                    country=country,
                    signup_channel=channel,
                    tier=rng.choice(TIERS[1:]),
                )
            )

    products: list[store_pb2.DimensionRecord] = []
    prices: dict[str, list[tuple[int, float]]] = {}
    product_ids = [f"sku-{n:05d}" for n in range(1, spec.products + 1)]
    for product_id in product_ids:
        category, brand = rng.choice(CATEGORIES), rng.choice(BRANDS)
        price = round(rng.uniform(5, 200), 2)
        versions = [(history, price)]
        for _ in range(rng.choice((0, 0, 1, 2))):  # price changes during the window
            versions.append(
                (
                    start + rng.randrange(spec.days * DAY_MICROS),
                    round(price * rng.uniform(0.7, 1.2), 2),
                )
            )
        versions.sort()
        prices[product_id] = versions
        for valid_from, version_price in versions:
            products.append(
                _record(product_id, valid_from, category=category, brand=brand, price=version_price)
            )

    def price_at(product_id: str, at: int) -> float:
        current = prices[product_id][0][1]
        for valid_from, price in prices[product_id]:
            if valid_from <= at:
                current = price
        return current

    user_weights = _zipf_weights(len(user_ids))
    product_weights = _zipf_weights(len(product_ids), 0.8)
    counter = itertools.count(1)
    events: list[event_pb2.Event] = []
    window = spec.days * DAY_MICROS - HOUR_MICROS

    def emit(user_id: str, at: int, event_type: str, **attributes: object) -> None:
        event = event_pb2.Event(
            event_id=f"evt-{spec.seed}-{next(counter):08d}",
            event_type=event_type,
            entity_id=user_id,
        )
        event.event_time.CopyFrom(timestamp_from_micros(at))
        for name, value in attributes.items():
            _set(event.attributes, name, value)
        events.append(event)

    for session_number in range(1, spec.sessions + 1):
        user_id = rng.choices(user_ids, user_weights)[0]
        at = start + rng.randrange(window)
        session_id = f"s-{spec.seed}-{session_number:07d}"
        cart: list[tuple[str, int]] = []
        for _ in range(1 + min(int(rng.expovariate(0.3)), 30)):
            at += rng.randrange(5, 120) * 1_000_000
            product_id = rng.choices(product_ids, product_weights)[0]
            emit(
                user_id,
                at,
                "page_view",
                session_id=session_id,
                page=f"/products/{product_id}",
                product_id=product_id,
            )
            if rng.random() < 0.2:
                at += rng.randrange(2, 30) * 1_000_000
                quantity = rng.choice((1, 1, 1, 2, 3))
                cart.append((product_id, quantity))
                emit(
                    user_id,
                    at,
                    "add_to_cart",
                    session_id=session_id,
                    product_id=product_id,
                    quantity=quantity,
                )
            elif rng.random() < 0.1:
                emit(user_id, at, "page_view", session_id=session_id, page=rng.choice(PAGES))
        if cart and rng.random() < 0.45:
            order_id = f"order-{spec.seed}-{session_number:07d}"
            for product_id, quantity in cart:
                at += 1_000_000
                emit(
                    user_id,
                    at,
                    "purchase",
                    session_id=session_id,
                    order_id=order_id,
                    product_id=product_id,
                    quantity=quantity,
                    amount=round(price_at(product_id, at) * quantity, 2),
                )
    events.sort(key=lambda e: (e.event_time.seconds, e.event_time.nanos, e.event_id))
    return DemoData(events, users, products)


def to_json_line(message: Any) -> str:
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True
    )


def write(data: DemoData, out_dir: Path) -> dict[str, Path]:
    """Writes events.jsonl, users.jsonl and products.jsonl; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, list[Any]]] = {
        "events": (out_dir / "events.jsonl", data.events),
        "users": (out_dir / "users.jsonl", data.users),
        "products": (out_dir / "products.jsonl", data.products),
    }
    for path, messages in files.values():
        with path.open("w", encoding="utf-8") as handle:
            for message in messages:
                handle.write(to_json_line(message) + "\n")
    return {name: path for name, (path, _messages) in files.items()}
