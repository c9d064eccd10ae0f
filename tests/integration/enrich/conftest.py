"""Fixtures of the enrich integration tests: ONE local Spark session for the whole test session
(starting one costs ~5 s), and an engine bound to each test's own table prefix."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from enrich.adapters.bigtable_io import BigtableTarget
from enrich.adapters.connectors import connector_jars
from enrich.adapters.spark_engine import SparkEngine, SparkSettings, build_session
from eventpipe.core import bigtable as core_bigtable
from eventpipe.core import schema
from pyspark.sql import SparkSession

SPARK_SETTINGS = SparkSettings(
    master="local[2]", partitions=4, shuffle_partitions=4, broadcast_max_rows=1000
)


@pytest.fixture(scope="session")
def spark_session(bigtable_emulator: Any) -> Iterator[SparkSession]:
    settings = SparkSettings(
        **{**SPARK_SETTINGS.__dict__, "jars": tuple(str(j) for j in connector_jars())}
    )
    session = build_session(settings)
    yield session
    session.stop()


@pytest.fixture
def target(common_settings: Any) -> BigtableTarget:
    return BigtableTarget(
        project=common_settings.bigtable_project,
        instance=common_settings.bigtable_instance,
        table_prefix=common_settings.table_prefix,
        emulator_host=os.environ.get("BIGTABLE_EMULATOR_HOST"),
    )


@pytest.fixture
def engine(spark_session: SparkSession, target: BigtableTarget, tmp_path: Any) -> SparkEngine:
    return SparkEngine(SPARK_SETTINGS, target, run_dir=tmp_path, session=spark_session)


@pytest.fixture
def tables(common_settings: Any) -> dict[str, Any]:
    return {
        name: core_bigtable.table(common_settings, name)
        for name in (
            schema.RAW_EVENTS_TABLE,
            schema.DIMENSIONS_TABLE,
            schema.ENRICHED_EVENTS_TABLE,
            schema.ENTITY_METRICS_TABLE,
            schema.ENTITY_PROFILES_TABLE,
        )
    }
