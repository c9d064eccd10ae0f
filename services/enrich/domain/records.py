"""Jobs as the domain keeps them: plain types, no protobuf (the servicer translates the wire's
``EnrichmentJob``, the job store's codec its stored bytes; the stores' interfaces:
enrich.ports). Times are microseconds since the epoch, durations microseconds."""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, field, fields
from enum import IntEnum

from eventpipe.core.storage.keys import job_id_for

from enrich.domain.work import Counters


class JobMode(IntEnum):
    """As ``eventpipe.enrich.v1.JobMode`` numbers them."""

    UNSPECIFIED = 0
    BATCH = 1
    SCHEDULED = 2
    STREAMING = 3


class JobState(IntEnum):
    """As ``eventpipe.enrich.v1.JobState`` numbers them."""

    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass
class Schedule:
    """A scheduled job's windows: one run per ``interval``; each run enriches ``window`` of
    events, ending ``lateness`` before the run."""

    interval_micros: int = 0
    window_micros: int = 0
    lateness_micros: int = 0


@dataclass
class TimeRange:
    """A batch job's events, ``[start, end)``; None: unset (open)."""

    start_micros: int | None = None
    end_micros: int | None = None


@dataclass
class Job:
    """An enrichment job: what was asked (mode, window, schedule, trigger, spec version) and
    where it is (state, progress, counters, error, times). None: unset."""

    job_id: str = ""
    mode: JobMode = JobMode.UNSPECIFIED
    time_range: TimeRange = field(default_factory=TimeRange)
    schedule: Schedule | None = None
    trigger_interval_micros: int | None = None
    spec_version: int = 0
    state: JobState = JobState.UNSPECIFIED
    progress: float = 0.0
    counters: Counters = field(default_factory=Counters)
    error: str = ""
    create_micros: int | None = None
    started_micros: int | None = None
    ended_micros: int | None = None

    def copy(self) -> Job:
        return copy.deepcopy(self)

    def assign(self, other: Job) -> None:
        """Becomes a copy of ``other`` in place (holders of this object see the change)."""
        for item in fields(self):
            setattr(self, item.name, copy.deepcopy(getattr(other, item.name)))


def new_job_id(create_micros: int) -> str:
    """Sorts newest first, like every time-ordered key of the schema."""
    return job_id_for(create_micros, secrets.token_hex(3))


@dataclass
class JobRecord:
    tenant_id: str
    job: Job
    next_run_micros: int = 0
