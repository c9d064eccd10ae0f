"""Events for the ingest tests: valid by default, broken one rule at a time by the caller."""

from __future__ import annotations

import time

from eventpipe.common.v1 import event_pb2
from eventpipe.core.storage.times import timestamp_from_micros


def now_micros() -> int:
    return time.time_ns() // 1000


def valid_event(event_id: str, entity_id: str = "user-1", **attributes: object) -> event_pb2.Event:
    event = event_pb2.Event(event_id=event_id, event_type="page_view", entity_id=entity_id)
    event.event_time.CopyFrom(timestamp_from_micros(now_micros() - 1_000_000))
    event.attributes["path"].string_value = "/home"
    for key, value in attributes.items():
        if isinstance(value, bool):
            event.attributes[key].bool_value = value
        elif isinstance(value, int):
            event.attributes[key].int_value = value
        elif isinstance(value, float):
            event.attributes[key].double_value = value
        else:
            event.attributes[key].string_value = str(value)
    return event
