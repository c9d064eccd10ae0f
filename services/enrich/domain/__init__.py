"""Enrichment domain logic: specs, the expression language, jobs and schedules (no grpc)."""
