"""gRPC servicer of eventpipe.enrich.v1.EnrichService: proto in, domain call, proto out."""

from __future__ import annotations

import grpc
from eventpipe.core.errors import invalid
from eventpipe.core.validation import check_id
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc

from enrich.adapters.job_codec import job_from_proto, job_to_proto
from enrich.adapters.spec_codec import spec_from_proto, spec_to_proto
from enrich.domain.jobs import JobManager


def _tenant(tenant_id: str) -> str:
    """The shared id rule (1-128 of A-Z a-z 0-9 . _ : -), as ingest, store and query check it."""
    violations = check_id("tenant_id", tenant_id)
    if violations:
        raise invalid(violations[0].field, violations[0].description)
    return tenant_id


class EnrichServicer(enrich_pb2_grpc.EnrichServiceServicer):
    """Thin adapter between the wire contract and the enrich domain logic."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def PutEnrichmentSpec(
        self, request: enrich_pb2.PutEnrichmentSpecRequest, context: grpc.ServicerContext
    ) -> enrich_pb2.PutEnrichmentSpecResponse:
        spec = self.manager.put_spec(_tenant(request.tenant_id), spec_from_proto(request.spec))
        return enrich_pb2.PutEnrichmentSpecResponse(spec=spec_to_proto(spec))

    def GetEnrichmentSpec(
        self, request: enrich_pb2.GetEnrichmentSpecRequest, context: grpc.ServicerContext
    ) -> enrich_pb2.GetEnrichmentSpecResponse:
        if request.version < 0:
            raise invalid("version", "must not be negative")
        spec = self.manager.get_spec(_tenant(request.tenant_id), request.version)
        return enrich_pb2.GetEnrichmentSpecResponse(spec=spec_to_proto(spec))

    def CreateEnrichmentJob(
        self, request: enrich_pb2.CreateEnrichmentJobRequest, context: grpc.ServicerContext
    ) -> enrich_pb2.CreateEnrichmentJobResponse:
        job = self.manager.create_job(_tenant(request.tenant_id), job_from_proto(request.job))
        return enrich_pb2.CreateEnrichmentJobResponse(job=job_to_proto(job))

    def GetEnrichmentJob(
        self, request: enrich_pb2.GetEnrichmentJobRequest, context: grpc.ServicerContext
    ) -> enrich_pb2.GetEnrichmentJobResponse:
        job = self.manager.get_job(_tenant(request.tenant_id), request.job_id)
        return enrich_pb2.GetEnrichmentJobResponse(job=job_to_proto(job))

    def ListEnrichmentJobs(
        self, request: enrich_pb2.ListEnrichmentJobsRequest, context: grpc.ServicerContext
    ) -> enrich_pb2.ListEnrichmentJobsResponse:
        jobs, token = self.manager.list_jobs(
            _tenant(request.tenant_id), request.page_size, request.page_token
        )
        return enrich_pb2.ListEnrichmentJobsResponse(
            jobs=[job_to_proto(job) for job in jobs], next_page_token=token
        )

    def CancelEnrichmentJob(
        self, request: enrich_pb2.CancelEnrichmentJobRequest, context: grpc.ServicerContext
    ) -> enrich_pb2.CancelEnrichmentJobResponse:
        job = self.manager.cancel_job(_tenant(request.tenant_id), request.job_id)
        return enrich_pb2.CancelEnrichmentJobResponse(job=job_to_proto(job))
