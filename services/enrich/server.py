"""Bootstrap of the enrich service: wires config, adapters and servicer into the shared server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from eventpipe.core import bigtable as core_bigtable
from eventpipe.core.bigtable import check_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.core.kafka import spark_kafka_options
from eventpipe.core.server import ServiceDefinition, run_service
from eventpipe.enrich.v1 import enrich_pb2, enrich_pb2_grpc

from enrich.adapters.bigtable_io import BigtableTarget
from enrich.adapters.entity_changes import JobOutputAnnouncer
from enrich.adapters.repository import (
    ENRICH_JOBS_TABLE,
    ENRICH_SPECS_TABLE,
    BigtableJobStore,
    BigtableSpecStore,
    ensure_enrich_tables,
)
from enrich.adapters.spark.session import SparkSettings
from enrich.adapters.spark_engine import SparkEngine, StreamSource
from enrich.config import EnrichSettings
from enrich.domain.jobs import JobManager
from enrich.servicer import EnrichServicer

log = logging.getLogger(__name__)
SERVICE_NAME = enrich_pb2.DESCRIPTOR.services_by_name["EnrichService"].full_name


@dataclass
class JobWorker:
    """Runs the job manager beside the RPCs: recovery at start, graceful stop."""

    manager: JobManager
    engine: SparkEngine

    def start(self) -> None:
        self.manager.start()

    def stop(self, timeout: float) -> None:
        self.manager.stop(timeout)
        try:
            self.engine.stop()
        except Exception:  # the JVM may have received the same SIGTERM and gone already
            log.info("spark session already gone at shutdown")


def build(settings: EnrichSettings, common: CommonSettings) -> ServiceDefinition:
    ensure_enrich_tables(common)
    spark = SparkEngine(
        SparkSettings(
            master=settings.spark_master,
            partitions=settings.spark_partitions,
            shuffle_partitions=settings.spark_shuffle_partitions,
            broadcast_max_rows=settings.broadcast_max_rows,
            jars=settings.spark_jar_paths(),
            extra_conf=settings.extra_spark_conf(),
            auth_secret=(
                settings.spark_auth_secret.get_secret_value()
                if settings.spark_auth_secret
                else None
            ),
        ),
        BigtableTarget(
            common.bigtable_project,
            common.bigtable_instance,
            common.table_prefix,
            os.environ.get("BIGTABLE_EMULATOR_HOST"),
        ),
        run_dir=Path(settings.run_dir),
        cancel_grace_seconds=settings.cancel_grace_seconds,
        probe_timeout_seconds=settings.session_probe_timeout_seconds,
        streams=StreamSource(
            spark_kafka_options(common),
            common.raw_topic,
            Path(settings.run_dir).resolve() / "checkpoints",
            settings.dimension_refresh_seconds,
            settings.event_limits(),
        ),
        on_entities_changed=JobOutputAnnouncer(common).publish,
    )
    manager = JobManager(
        BigtableSpecStore(core_bigtable.table(common, ENRICH_SPECS_TABLE)),
        BigtableJobStore(core_bigtable.table(common, ENRICH_JOBS_TABLE)),
        spark,
        quotas=settings.quotas(),
        retention_micros=common.raw_retention_days * 86_400_000_000,
        tick_seconds=settings.scheduler_tick_seconds,
        rescan_seconds=settings.scheduler_rescan_seconds,
        retry_initial_micros=round(settings.scheduler_retry_initial_seconds * 1e6),
        retry_max_micros=round(settings.scheduler_retry_max_seconds * 1e6),
        claim_lease_micros=round(settings.scheduler_claim_lease_seconds * 1e6),
        page_token_secret=(
            settings.page_token_secret.get_secret_value().encode()
            if settings.page_token_secret
            else None
        ),
    )
    servicer = EnrichServicer(manager)
    return ServiceDefinition(
        name="enrich",
        grpc_service_names=[SERVICE_NAME],
        register=partial(enrich_pb2_grpc.add_EnrichServiceServicer_to_server, servicer),
        readiness_checks=[partial(check_bigtable, common)],
        # A Spark session that broke and could not be rebuilt: restart the pod.
        liveness_checks=[spark.check_alive],
        workers=[JobWorker(manager, spark)],
    )


def main() -> int:
    return run_service("enrich", EnrichSettings, build)
