"""Specs and job records in Bigtable tables of the enrich service's own, so they survive
restarts. Both are created idempotently at start (``ensure_enrich_tables``).

- ``enrich_specs``: row ``<tenant>#<reversed version>`` (latest first), ``m:spec`` = the
  serialized EnrichmentSpec (``enrich.adapters.spec_codec``). A new version is written with
  CheckAndMutate on an empty row, so two concurrent puts cannot both take the same version.
- ``enrich_jobs``: row ``<tenant>#<job_id>``; job ids embed the reversed creation time, so a
  prefix scan lists newest first. ``m:job`` = the serialized EnrichmentJob
  (``enrich.adapters.job_codec``), ``m:next_run`` (int64 micros) = when a scheduled job's next
  window starts, ``m:claim`` = which replica runs that window (below). ``save`` never writes
  ``m:claim``, so saving a record keeps its claim. ``m:active_schedule`` (value "1") marks a
  scheduled job that has not ended: ``save`` sets it for a PENDING or RUNNING scheduled job and
  deletes it otherwise, and ``scheduled_records`` reads only the rows that have it (a
  conditional filter on the server), so replicas find each other's schedules without reading
  the job table.

The window claim is ASCII ``<due micros, 20 digits>/<lease expiry micros, 20 digits>/<owner>``.
Zero-padded numbers sort as bytes like they sort as numbers, so "a claim that refuses mine" is
one value range: every value from ``<my due>/<now + 1>/`` up, i.e. a live lease on this window
or any claim on a later one. ``claim_window`` is one CheckAndMutateRow whose predicate matches,
and so writes the claim, when the row has ``m:job`` and no refusing claim, the owner's own claim
on this window excepted (a Condition filter on a value regex), so an owner can renew or release.
"""

from __future__ import annotations

import re

from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.core.storage import keys
from eventpipe.core.storage.attributes import decode_int, encode_int
from eventpipe.core.storage.rows import latest_cells
from eventpipe.core.storage.tables import (
    ENRICH_JOBS_TABLE,
    ENRICH_SPECS_TABLE,
    META_FAMILY,
    enrich_table_specs,
)
from google.cloud.bigtable.row_filters import (
    BlockAllFilter,
    CellsColumnLimitFilter,
    ColumnQualifierRegexFilter,
    ConditionalRowFilter,
    FamilyNameRegexFilter,
    PassAllFilter,
    RowFilter,
    RowFilterChain,
    ValueRangeFilter,
    ValueRegexFilter,
)
from google.cloud.bigtable.table import Table

from enrich.adapters.job_codec import job_from_bytes, job_to_bytes
from enrich.adapters.spec_codec import spec_from_bytes, spec_to_bytes
from enrich.domain.records import TERMINAL, JobMode, JobRecord
from enrich.domain.spec import Spec

__all__ = [
    "CLAIM_OWNER_PATTERN",
    "ENRICH_JOBS_TABLE",
    "ENRICH_SPECS_TABLE",
    "BigtableJobStore",
    "BigtableSpecStore",
    "ensure_enrich_tables",
]

FAMILY = META_FAMILY
ACTIVE_SCHEDULE = b"active_schedule"
CLAIM_OWNER_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""A claim owner, matched whole (``fullmatch``): a trailing newline does not pass."""


def ensure_enrich_tables(settings: CommonSettings) -> None:
    core_bigtable.ensure_tables(settings, enrich_table_specs())


class BigtableSpecStore:
    def __init__(self, table: Table) -> None:
        self.table = table

    def put(self, tenant_id: str, spec: Spec) -> Spec:
        for _attempt in range(20):
            latest = self.get(tenant_id)
            stored = spec.copy()
            stored.version = (latest.version if latest else 0) + 1
            row = self.table.conditional_row(
                keys.row_key_for_spec(tenant_id, stored.version), filter_=PassAllFilter(True)
            )
            row.set_cell(FAMILY, b"spec", spec_to_bytes(stored), state=False)
            if not row.commit():  # False: the row was empty and the write applied
                return stored
        raise RuntimeError("could not allocate a spec version under contention")

    def get(self, tenant_id: str, version: int = 0) -> Spec | None:
        if version:
            row = self.table.read_row(keys.row_key_for_spec(tenant_id, version))
            rows = [row] if row is not None else []
        else:
            start, end = keys.prefix_range(keys.tenant_prefix(tenant_id))
            rows = list(self.table.read_rows(start_key=start, end_key=end, limit=1))
        if not rows:
            return None
        return spec_from_bytes(latest_cells(rows[0])[(FAMILY, b"spec")])


class BigtableJobStore:
    def __init__(self, table: Table) -> None:
        self.table = table

    def save(self, record: JobRecord) -> None:
        row = self.table.direct_row(keys.row_key_for_job(record.tenant_id, record.job.job_id))
        row.set_cell(FAMILY, b"tenant_id", record.tenant_id.encode())
        row.set_cell(FAMILY, b"job", job_to_bytes(record.job))
        row.set_cell(FAMILY, b"next_run", encode_int(record.next_run_micros))
        if record.job.mode == JobMode.SCHEDULED and record.job.state not in TERMINAL:
            row.set_cell(FAMILY, ACTIVE_SCHEDULE, b"1")
        else:
            row.delete_cell(FAMILY, ACTIVE_SCHEDULE)
        status = row.commit()
        if status is not None and getattr(status, "code", 0) != 0:
            raise RuntimeError(f"saving job {record.job.job_id} failed: {status}")

    @staticmethod
    def _record(row: object) -> JobRecord:
        cells = latest_cells(row)
        return JobRecord(
            cells[(FAMILY, b"tenant_id")].decode(),
            job_from_bytes(cells[(FAMILY, b"job")]),
            decode_int(cells.get((FAMILY, b"next_run"), encode_int(0))),
        )

    def get(self, tenant_id: str, job_id: str) -> JobRecord | None:
        row = self.table.read_row(keys.row_key_for_job(tenant_id, job_id))
        return None if row is None else self._record(row)

    def list_page(
        self, tenant_id: str, page_size: int, after_job_id: str | None
    ) -> list[JobRecord]:
        start, end = keys.prefix_range(keys.tenant_prefix(tenant_id))
        if after_job_id:
            start = keys.key_after(keys.row_key_for_job(tenant_id, after_job_id))
        rows = self.table.read_rows(start_key=start, end_key=end, limit=page_size)
        return [self._record(row) for row in rows]

    def all_records(self) -> list[JobRecord]:
        return [self._record(row) for row in self.table.read_rows()]

    def scheduled_records(self) -> list[JobRecord]:
        marked = ConditionalRowFilter(
            RowFilterChain(_cell(ACTIVE_SCHEDULE)), true_filter=PassAllFilter(True)
        )
        return [self._record(row) for row in self.table.read_rows(filter_=marked)]

    def claim_window(
        self,
        tenant_id: str,
        job_id: str,
        due_micros: int,
        owner: str,
        now_micros: int,
        lease_micros: int,
    ) -> bool:
        if not CLAIM_OWNER_PATTERN.fullmatch(owner):
            raise ValueError(f"claim owner must match {CLAIM_OWNER_PATTERN.pattern}: {owner!r}")
        if min(due_micros, now_micros, lease_micros) < 0:
            raise ValueError("claim times must not be negative")
        row = self.table.conditional_row(
            keys.row_key_for_job(tenant_id, job_id),
            filter_=_claim_allowed(due_micros, owner, now_micros),
        )
        value = _claim_value(due_micros, now_micros + lease_micros, owner)
        # Older versions wait for garbage collection and would still meet the predicate: the
        # claim replaces them in the same atomic mutation, so the column holds one cell.
        row.delete_cell(FAMILY, b"claim", state=True)
        row.set_cell(FAMILY, b"claim", value, state=True)
        return bool(row.commit())


def _claim_value(due_micros: int, expires_micros: int, owner: str) -> bytes:
    return f"{due_micros:020d}/{expires_micros:020d}/{owner}".encode()


def _cell(qualifier: bytes) -> list[RowFilter]:
    """The latest version of ``m:<qualifier>``."""
    return [
        FamilyNameRegexFilter(FAMILY),
        ColumnQualifierRegexFilter(re.escape(qualifier)),
        CellsColumnLimitFilter(1),
    ]


def _claim_allowed(due_micros: int, owner: str, now_micros: int) -> RowFilter:
    """Matches a row whose ``m:job`` exists and whose claim (if any) does not refuse ``owner``."""
    own_claim = ValueRegexFilter(f"{due_micros:020d}/[0-9]{{20}}/{re.escape(owner)}".encode())
    refusing = RowFilterChain(
        [
            *_cell(b"claim"),
            ConditionalRowFilter(
                own_claim,
                true_filter=BlockAllFilter(True),
                # a live lease on this window, or any claim on a later window
                false_filter=ValueRangeFilter(
                    start_value=_claim_value(due_micros, now_micros + 1, ""), inclusive_start=True
                ),
            ),
        ]
    )
    return ConditionalRowFilter(
        refusing, true_filter=BlockAllFilter(True), false_filter=RowFilterChain(_cell(b"job"))
    )
