"""The classes of dead-letter reasons: a short, fixed name for each family of reasons the store
consumer writes in ``eventpipe-dlq-error`` (docs/store.md lists the reasons).

One table for whoever groups dead letters: the store's ``eventpipe_store_dead_lettered_total``
label (low cardinality: these names only) and ``eventpipe dlq --reason-class``.
"""

from __future__ import annotations

from eventpipe.core import topic_contract

# (class, how its reasons start), in the order they are tried.
REASON_CLASSES: tuple[tuple[str, str], ...] = (
    ("empty-value", "empty message value"),
    ("undecodable", "value is not a serialized"),
    ("schema-header", f"unsupported {topic_contract.HEADER_SCHEMA}"),
    ("tenant-header", f"{topic_contract.HEADER_TENANT} header"),
    ("ingest-time-header", f"{topic_contract.HEADER_INGEST_TIME} header"),
    ("untrusted-ingest-time", "untrusted ingest_time"),
    ("invalid-event", "invalid event:"),
    ("key", "message key must be"),
    ("decode-error", "cannot decode the message"),
    ("row-error", "cannot turn the message into a row"),
    ("bigtable", "bigtable refused the row"),
)
OTHER_CLASS = "other"
CLASS_NAMES: tuple[str, ...] = (*(name for name, _ in REASON_CLASSES), OTHER_CLASS)


def reason_class(reason: str) -> str:
    """The class of a dead-letter reason (``other`` for a reason no class describes)."""
    for name, prefix in REASON_CLASSES:
        if reason.startswith(prefix):
            return name
    return OTHER_CLASS
