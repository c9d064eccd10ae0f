"""Events and tenants for the tests that talk JSON through the edge."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


def new_tenant(label: str) -> str:
    """A tenant id no other test uses, readable in logs by its label."""
    return f"{label}-{uuid.uuid4().hex[:10]}"


def event_json(event_id: str, padding: int = 0) -> dict[str, Any]:
    """A valid page_view of user-1 happening now, as REST and gRPC JSON spell it.

    Args:
        padding: adds an attribute of that many bytes, to make the event larger.
    """
    attributes: dict[str, Any] = {"path": {"string_value": "/home"}}
    if padding:
        attributes["pad"] = {"string_value": "p" * padding}
    return {
        "event_id": event_id,
        "event_type": "page_view",
        "entity_id": "user-1",
        "event_time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "attributes": attributes,
    }
