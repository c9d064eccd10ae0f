"""The validated parameters of each read: built from plain values, checked once.

Ids are checked with the event rules (no '#', so nothing can be injected into a row key) and
every row key is built from the request's own tenant, which the auth interceptor has already
matched against the caller's token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from eventpipe.core.errors import Violation, invalid_fields
from eventpipe.core.storage.granularity import Granularity
from eventpipe.core.validation import EVENT_TYPE_PATTERN, TimeBounds, check_id

from query.ports import EventView

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_EVENT_TYPES = 50
MAX_METRIC_BUCKETS = 10_000
# GetEntityMetrics without a start_time reaches this far back from its end.
DEFAULT_METRICS_SPAN_MICROS = 24 * 3_600_000_000


def _raise_if(violations: list[Violation]) -> None:
    if violations:
        raise invalid_fields(violations)


def _check_ids(tenant_id: str, entity_id: str) -> list[Violation]:
    return check_id("tenant_id", tenant_id) + check_id("entity_id", entity_id)


def _check_event_types(event_types: Sequence[str]) -> list[Violation]:
    violations: list[Violation] = []
    if len(event_types) > MAX_EVENT_TYPES:
        violations.append(Violation("event_types", f"at most {MAX_EVENT_TYPES} are allowed"))
    for i, event_type in enumerate(event_types):
        if not EVENT_TYPE_PATTERN.fullmatch(event_type):
            violations.append(
                Violation(f"event_types[{i}]", "must start with a-z and use a-z 0-9 _ . (max 64)")
            )
    return violations


@dataclass(frozen=True)
class EntityRef:
    tenant_id: str
    entity_id: str

    @classmethod
    def parse(cls, tenant_id: str, entity_id: str) -> EntityRef:
        _raise_if(_check_ids(tenant_id, entity_id))
        return cls(tenant_id, entity_id)


@dataclass(frozen=True)
class EventsQuery:
    """ListEntityEvents, validated: times in micros, [start, end), None = open."""

    tenant_id: str
    entity_id: str
    start_micros: int | None
    end_micros: int | None
    event_types: tuple[str, ...]
    view: EventView
    page_size: int
    page_token: str

    @classmethod
    def parse(
        cls,
        *,
        tenant_id: str,
        entity_id: str,
        time_range: TimeBounds,
        event_types: Sequence[str],
        view: EventView,
        page_size: int,
        page_token: str,
    ) -> EventsQuery:
        violations = _check_ids(tenant_id, entity_id)
        violations += time_range.violations
        violations += _check_event_types(event_types)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            violations.append(Violation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
        _raise_if(violations)
        return cls(
            tenant_id=tenant_id,
            entity_id=entity_id,
            start_micros=time_range.start_micros,
            end_micros=time_range.end_micros,
            # Order and repeats do not change the answer, so they do not change the key.
            event_types=tuple(sorted(set(event_types))),
            view=view,
            page_size=page_size or DEFAULT_PAGE_SIZE,
            page_token=page_token,
        )

    def binding(self) -> bytes:
        """What a page token is bound to: everything that selects rows, except page_size."""
        return json.dumps(
            [
                self.tenant_id,
                self.entity_id,
                self.view.value,
                self.start_micros,
                self.end_micros,
                list(self.event_types),
            ],
            separators=(",", ":"),
        ).encode()


def _granularity(label: str) -> Granularity:
    """The granularity of a label already checked by ``MetricsQuery.parse``."""
    granularity = Granularity.from_label(label)
    if granularity is None:
        raise ValueError(f"unknown granularity {label!r}")
    return granularity


def _default_metrics_range(
    time_range: TimeBounds, granularity: str, now_micros: int
) -> tuple[int, int]:
    """Fills the unset bounds of a metrics range: the last 24 hours by default.

    An unset end is the end of the bucket holding ``now``, not ``now`` itself: the same
    buckets are returned (their starts lie before ``now`` either way), and the range, so
    the cached answer, stays the same for the whole bucket.
    """
    end = time_range.end_micros
    if end is None:
        width = _granularity(granularity).width_micros
        end = (now_micros // width + 1) * width
    start = time_range.start_micros
    if start is None:
        start = end - DEFAULT_METRICS_SPAN_MICROS
    return start, end


@dataclass(frozen=True)
class MetricsQuery:
    """GetEntityMetrics, validated: buckets whose start lies in [start, end)."""

    tenant_id: str
    entity_id: str
    start_micros: int
    end_micros: int
    granularity: str  # "hour" | "day"
    event_types: tuple[str, ...]

    @classmethod
    def parse(
        cls,
        *,
        tenant_id: str,
        entity_id: str,
        time_range: TimeBounds,
        granularity: str,
        event_types: Sequence[str],
        now_micros: int | None = None,
    ) -> MetricsQuery:
        """``time_range`` comes from ``check_time_range``; an unset bound is not open here
        but defaults (``_default_metrics_range``) around ``now_micros`` (the clock if None).
        """
        violations = _check_ids(tenant_id, entity_id)
        violations += time_range.violations
        violations += _check_event_types(event_types)
        if Granularity.from_label(granularity) is None:
            violations.append(Violation("granularity", "must be hour or day"))
        _raise_if(violations)
        if now_micros is None:
            now_micros = time.time_ns() // 1000
        start_micros, end_micros = _default_metrics_range(time_range, granularity, now_micros)
        if start_micros >= end_micros:  # only when a set start met a defaulted end
            violations.append(
                Violation(
                    "time_range.start_time",
                    "must be before end_time, which is unset: the end of the current bucket",
                )
            )
        else:
            buckets = (end_micros - start_micros) // _granularity(granularity).width_micros
            if buckets > MAX_METRIC_BUCKETS:
                violations.append(
                    Violation(
                        "time_range", f"spans more than {MAX_METRIC_BUCKETS} {granularity} buckets"
                    )
                )
        _raise_if(violations)
        return cls(
            tenant_id,
            entity_id,
            start_micros,
            end_micros,
            granularity,
            tuple(sorted(set(event_types))),
        )

    @property
    def granularity_code(self) -> Granularity:
        return _granularity(self.granularity)
