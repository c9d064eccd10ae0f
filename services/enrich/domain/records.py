"""Job records as the job store keeps them (the stores' interfaces: enrich.ports)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from eventpipe.core.storage.keys import job_id_for
from eventpipe.enrich.v1 import enrich_pb2


def new_job_id(create_micros: int) -> str:
    """Sorts newest first, like every time-ordered key of the schema."""
    return job_id_for(create_micros, secrets.token_hex(3))


@dataclass
class JobRecord:
    tenant_id: str
    job: enrich_pb2.EnrichmentJob
    next_run_micros: int = 0
