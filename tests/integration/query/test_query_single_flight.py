"""A stampede of concurrent misses on one key makes one Bigtable read: the query service runs
in this process (the shared bootstrap, a real gRPC server) on the real emulator, so the reads
can be counted in the Bigtable adapter itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc
import pytest
from eventpipe.core.config import CommonSettings
from eventpipe.core.server import RunningServer, ServiceDefinition, create_server
from eventpipe.core.storage import tables
from eventpipe.core.storage.rows import Cells
from eventpipe.core.topology import ensure_topology
from eventpipe.core.waiting import DeadlineExceeded, wait_until
from eventpipe.query.v1 import query_pb2, query_pb2_grpc
from eventpipe.stack.components import BigtableEmulator, KafkaBroker
from query.adapters.bigtable_store import BigtableEntityStore
from query.config import QuerySettings
from query.server import SERVICE_NAME, build_cache, build_reader
from query.servicer import QueryServicer

from tests.conftest import Isolation
from tests.integration.query.loader import RowLoader
from tests.unit.query.rows import BASE_MICROS, profile_row, string

STAMPEDE = 32


class HeldProfileReads(BigtableEntityStore):
    """The real adapter; each profile read first waits (bounded) until the rest of the
    stampede has queued behind it, so the requests truly overlap."""

    ready_when = lambda: True  # noqa: E731 - replaced by the test

    def read_profile(self, key: bytes) -> Cells | None:
        # Without single flight nobody queues: the wait times out and every request reads.
        with contextlib.suppress(DeadlineExceeded):
            wait_until(type(self).ready_when, timeout=5, interval=0.005, what="stampede")
        return super().read_profile(key)


@pytest.fixture
def in_process_query(
    kafka_broker: KafkaBroker, bigtable_emulator: BigtableEmulator
) -> Iterator[tuple[RunningServer, HeldProfileReads, CommonSettings, str]]:
    names = Isolation.new()
    common = CommonSettings(
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        topic_prefix=names.topic_prefix,
        table_prefix=names.table_prefix,
    )
    ensure_topology(common)
    settings = QuerySettings(host="127.0.0.1", port=0, max_workers=STAMPEDE + 4)
    store = HeldProfileReads(common)
    cache = build_cache(settings, suspended=False)
    servicer = QueryServicer(build_reader(settings, store, cache))
    definition = ServiceDefinition(
        name="query",
        grpc_service_names=[SERVICE_NAME],
        register=partial(query_pb2_grpc.add_QueryServiceServicer_to_server, servicer),
    )
    running = create_server(definition, settings, start_metrics=False)
    HeldProfileReads.ready_when = lambda: (
        cache.waiters((names.tenant_id, "user-1", "profile")) >= STAMPEDE - 1
    )
    try:
        yield running, store, common, names.tenant_id
    finally:
        running.stop(1)
        store.close()


def test_a_stampede_of_misses_on_one_profile_makes_one_bigtable_read(
    in_process_query: tuple[RunningServer, HeldProfileReads, CommonSettings, str],
) -> None:
    running, store, common, tenant = in_process_query
    loader = RowLoader(common)
    loader.write(
        tables.ENTITY_PROFILES_TABLE,
        [
            profile_row(
                tenant,
                "user-1",
                fields={"users.plan": string("pro")},
                first_seen=BASE_MICROS,
                last_seen=BASE_MICROS,
                update_time=BASE_MICROS,
                event_count=1,
                type_counts={},
                totals={},
            )
        ],
    )
    loader.close()
    request = query_pb2.GetEntityRequest(tenant_id=tenant, entity_id="user-1")
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        with ThreadPoolExecutor(STAMPEDE) as pool:
            replies = list(pool.map(lambda _: stub.GetEntity(request, timeout=30), range(STAMPEDE)))
    assert {r.profile.dimension_fields["users.plan"].string_value for r in replies} == {"pro"}
    assert store.reads["read_profile"] == 1
