"""Job records and the stores that keep specs and jobs (implemented in enrich.adapters)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from eventpipe.core import schema
from eventpipe.enrich.v1 import enrich_pb2


def new_job_id(create_micros: int) -> str:
    """Sorts newest first, like every time-ordered key of the schema."""
    return f"j{schema.REVERSED_TIME_MAX - create_micros:019d}{secrets.token_hex(3)}"


@dataclass
class JobRecord:
    tenant_id: str
    job: enrich_pb2.EnrichmentJob
    next_run_micros: int = 0


class SpecStore(Protocol):
    def put(self, tenant_id: str, spec: enrich_pb2.EnrichmentSpec) -> enrich_pb2.EnrichmentSpec:
        """Stores ``spec`` as the next version (assigned here) and returns it."""
        ...

    def get(self, tenant_id: str, version: int = 0) -> enrich_pb2.EnrichmentSpec | None: ...


class JobStore(Protocol):
    def save(self, record: JobRecord) -> None: ...

    def get(self, tenant_id: str, job_id: str) -> JobRecord | None: ...

    def list_page(
        self, tenant_id: str, page_size: int, after_job_id: str | None
    ) -> list[JobRecord]: ...

    def all_records(self) -> list[JobRecord]: ...
