"""Every row key, key range and key parser of every table. Nothing else formats or parses a
key, so a layout change is one edit here.

- Event, metric and profile keys start with a two-hex-digit salt derived from (tenant,
  entity), so neither a busy tenant nor the current time range lands on a single tablet, while
  one entity's rows stay contiguous.
- Times inside keys are reversed (``2**63-1 - micros``, zero-padded to 19 digits) so a prefix
  scan returns the newest first.
- ``event_id`` is the last key component: a replayed event rewrites its own row.
- ``#`` separates parts; no id may contain it (see the id rules in event.proto).
"""

from __future__ import annotations

import hashlib

from eventpipe.core.storage.granularity import Granularity

KeyRange = tuple[bytes, bytes]
"""[start, end) of row keys; an empty end means the end of the table."""

REVERSED_TIME_MAX = 2**63 - 1
"""The largest time a key can hold: reversed times are ``REVERSED_TIME_MAX - micros``."""
SALT_BUCKETS = 256
KEY_SEPARATOR = "#"  # never allowed inside ids (see the id rules in event.proto)


def reversed_time(value_micros: int) -> str:
    """A time (or version) inside a key, so that later sorts first."""
    return f"{REVERSED_TIME_MAX - value_micros:019d}"


def _time_of_reversed(text: str | bytes) -> int:
    return REVERSED_TIME_MAX - int(text)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def key_after(key: bytes) -> bytes:
    """The smallest key greater than ``key``: where a scan resumes strictly after it."""
    return key + b"\x00"


def prefix_range(prefix: bytes) -> KeyRange:
    """Every key starting with ``prefix``."""
    return prefix, prefix_end(prefix)


# ---------------------------------------------------------------- salted entity rows


def salt(tenant_id: str, entity_id: str) -> str:
    digest = hashlib.blake2b(f"{tenant_id}\x00{entity_id}".encode(), digest_size=2).digest()
    return f"{int.from_bytes(digest, 'big') % SALT_BUCKETS:02x}"


def entity_prefix(tenant_id: str, entity_id: str) -> bytes:
    """Every event row of one entity starts with this; also the profile's row key + '#'."""
    return f"{salt(tenant_id, entity_id)}#{tenant_id}#{entity_id}#".encode()


def tenant_event_ranges(tenant_id: str) -> list[KeyRange]:
    """One range per salt prefix: every event row of the tenant lies in one of them."""
    return [prefix_range(f"{bucket:02x}#{tenant_id}#".encode()) for bucket in range(SALT_BUCKETS)]


def row_key_for_event(
    tenant_id: str, entity_id: str, event_time_micros: int, event_id: str
) -> bytes:
    """Raw and enriched events: newest first within the entity, unique per event_id."""
    return entity_prefix(tenant_id, entity_id) + (
        f"{reversed_time(event_time_micros)}#{event_id}".encode()
    )


def event_key_range(
    tenant_id: str, entity_id: str, start_micros: int | None, end_micros: int | None
) -> KeyRange:
    """[start_key, end_key) covering the entity's events with start <= event_time < end."""
    prefix = entity_prefix(tenant_id, entity_id)
    start_key = (
        prefix + reversed_time(end_micros - 1).encode() if end_micros is not None else prefix
    )
    if start_micros is not None:
        end_key = prefix + reversed_time(start_micros - 1).encode()
    else:
        end_key = prefix_end(prefix)
    return start_key, end_key


def entity_key_suffix(tenant_id: str, entity_id: str, row_key: bytes) -> bytes:
    """The part of one of the entity's row keys after ``entity_prefix``: a page cursor that
    cannot name another entity's row. ValueError on a key outside the entity."""
    prefix = entity_prefix(tenant_id, entity_id)
    if not row_key.startswith(prefix):
        raise ValueError(f"row key {row_key!r} is not under {prefix!r}")
    return row_key[len(prefix) :]


def entity_row_key(tenant_id: str, entity_id: str, suffix: bytes) -> bytes:
    """Inverse of ``entity_key_suffix``."""
    return entity_prefix(tenant_id, entity_id) + suffix


def row_key_for_event_id(tenant_id: str, event_id: str) -> bytes:
    """The idempotency index row of (tenant, event_id), salted like the event rows."""
    return f"{salt(tenant_id, event_id)}#{tenant_id}#{event_id}".encode()


def row_key_for_profile(tenant_id: str, entity_id: str) -> bytes:
    return f"{salt(tenant_id, entity_id)}#{tenant_id}#{entity_id}".encode()


def entity_rows_range(tenant_id: str, entity_id: str) -> KeyRange:
    """Every event, enriched-event or metric row of one entity (not its profile, whose key
    has no trailing separator): what erasing the entity deletes from those tables."""
    return prefix_range(entity_prefix(tenant_id, entity_id))


def row_key_for_erasure(tenant_id: str, entity_id: str) -> bytes:
    """The erasure tombstone of one entity, salted like its rows (``storage.erasures``)."""
    return f"{salt(tenant_id, entity_id)}#{tenant_id}#{entity_id}".encode()


def row_key_for_erasure_audit(tenant_id: str, erased_micros: int, entity_id: str) -> bytes:
    """One erasure's audit record: tenant first, newest first (a prefix scan lists them)."""
    return tenant_prefix(tenant_id) + f"{reversed_time(erased_micros)}#{entity_id}".encode()


def parse_erasure_audit_key(tenant_id: str, row_key: bytes) -> tuple[int, str]:
    """Inverse of ``row_key_for_erasure_audit``: (erased micros, entity id); ValueError on a
    key outside the tenant."""
    prefix = tenant_prefix(tenant_id)
    if not row_key.startswith(prefix):
        raise ValueError(f"row key {row_key!r} is not under {prefix!r}")
    reversed_erased, _, entity_id = row_key[len(prefix) :].decode().partition("#")
    return _time_of_reversed(reversed_erased), entity_id


def row_key_for_metric(
    tenant_id: str, entity_id: str, granularity: str, bucket_start_micros: int
) -> bytes:
    """Aggregates: ``granularity`` is a ``Granularity`` ("h" or "d"); buckets ascend in time."""
    return (
        entity_prefix(tenant_id, entity_id)
        + f"{Granularity(granularity)}#{bucket_start_micros:019d}".encode()
    )


def metric_key_range(
    tenant_id: str, entity_id: str, granularity: str, start_micros: int, end_micros: int
) -> KeyRange:
    """[start_key, end_key) covering the buckets whose start lies in [start, end)."""
    return (
        row_key_for_metric(tenant_id, entity_id, granularity, max(start_micros, 0)),
        row_key_for_metric(tenant_id, entity_id, granularity, max(end_micros, 0)),
    )


def metric_buckets_range(tenant_id: str, entity_id: str, granularity: str) -> KeyRange:
    """Every bucket of one entity at one granularity."""
    return prefix_range(
        entity_prefix(tenant_id, entity_id) + f"{Granularity(granularity)}#".encode()
    )


def bucket_start_of_metric_key(key: bytes) -> int:
    """The bucket start of a ``row_key_for_metric`` key; ValueError on a foreign key."""
    return int(key.rsplit(b"#", 1)[1])


def profile_key_of_metric_key(key: bytes) -> bytes:
    """The ``row_key_for_profile`` of the entity a ``row_key_for_metric`` key belongs to."""
    return key.rsplit(b"#", 2)[0]


# ---------------------------------------------------------------- dimensions (unsalted)


def dimension_records_prefix(tenant_id: str, dimension: str) -> bytes:
    """Every version of every record of one dimension starts with this."""
    return f"{tenant_id}#{dimension}#".encode()


def dimension_prefix(tenant_id: str, dimension: str, key: str) -> bytes:
    """Every version of one record starts with this."""
    return dimension_records_prefix(tenant_id, dimension) + f"{key}#".encode()


def row_key_for_dimension(
    tenant_id: str, dimension: str, key: str, valid_from_micros: int
) -> bytes:
    """One row per record version, newest first: the first row at or after
    ``dimension_prefix + reversed(as_of)`` is the version valid at ``as_of``."""
    return dimension_prefix(tenant_id, dimension, key) + reversed_time(valid_from_micros).encode()


def valid_from_of_dimension_key(row_key: bytes) -> int:
    """Inverse of ``row_key_for_dimension`` for valid_from; ValueError on a foreign key."""
    return _time_of_reversed(row_key.rsplit(b"#", 1)[1])


def parse_dimension_key(tenant_id: str, dimension: str, row_key: bytes) -> tuple[str, int]:
    """Inverse of ``row_key_for_dimension``: (record key, valid_from) of a key under
    ``dimension_records_prefix(tenant_id, dimension)``; ValueError on a foreign key."""
    prefix = dimension_records_prefix(tenant_id, dimension)
    if not row_key.startswith(prefix):
        raise ValueError(f"row key {row_key!r} is not under {prefix!r}")
    key, _, reversed_valid_from = row_key[len(prefix) :].decode().rpartition("#")
    return key, _time_of_reversed(reversed_valid_from)


def dimension_as_of_start(tenant_id: str, dimension: str, key: str, as_of_micros: int) -> bytes:
    return dimension_prefix(tenant_id, dimension, key) + reversed_time(as_of_micros).encode()


# ---------------------------------------------------------------- enrich's state tables


def tenant_prefix(tenant_id: str) -> bytes:
    """Every spec version or job record of one tenant starts with this."""
    return f"{tenant_id}#".encode()


def row_key_for_spec(tenant_id: str, version: int) -> bytes:
    """Enrichment spec versions: newest first within the tenant."""
    return tenant_prefix(tenant_id) + reversed_time(version).encode()


def row_key_for_job(tenant_id: str, job_id: str) -> bytes:
    """Job records; job ids embed the reversed creation time (``job_id_for``), so a prefix
    scan lists newest first."""
    return tenant_prefix(tenant_id) + job_id.encode()


def job_id_for(create_micros: int, suffix: str) -> str:
    """A job id: ``j`` + the reversed creation time + a random ``suffix``."""
    return f"j{reversed_time(create_micros)}{suffix}"
