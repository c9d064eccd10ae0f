"""Bootstrap of the query service: wires config, adapters and servicer into the shared server."""

from __future__ import annotations

import logging
from functools import partial

from eventpipe.core.bigtable import check_bigtable
from eventpipe.core.config import CommonSettings
from eventpipe.core.page_tokens import PageTokenCodec
from eventpipe.core.server import ServiceDefinition, run_service
from eventpipe.query.v1 import query_pb2, query_pb2_grpc

from query.adapters.bigtable_store import BigtableEntityStore
from query.adapters.entity_changes import EntityChangeListener
from query.cache import AnswerCache
from query.config import QuerySettings
from query.ports import EntityStore
from query.reader import EntityReader, estimated_size
from query.servicer import QueryServicer

SERVICE_NAME = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
log = logging.getLogger(__name__)


def build_cache(settings: QuerySettings, *, suspended: bool) -> AnswerCache:
    return AnswerCache(
        max_entries=settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes,
        ttl_seconds=settings.cache_ttl_seconds,
        sizeof=estimated_size,
        wait_timeout_seconds=settings.single_flight_wait_seconds,
        suspended=suspended,
    )


LIST_ENTITY_EVENTS = "eventpipe.query.v1.QueryService/ListEntityEvents"


def build_reader(settings: QuerySettings, store: EntityStore, cache: AnswerCache) -> EntityReader:
    secret = settings.page_token_secret.get_secret_value().encode()
    return EntityReader(store, cache, PageTokenCodec(secret, LIST_ENTITY_EVENTS))


def build(settings: QuerySettings, common: CommonSettings) -> ServiceDefinition:
    if settings.uses_local_dev_secret:
        log.warning(
            "page tokens are signed with the local-dev secret: set "
            "EVENTPIPE_QUERY_PAGE_TOKEN_SECRET (the same on every replica) in production"
        )
    store = BigtableEntityStore(common, timeout_seconds=settings.bigtable_timeout_seconds)
    # Suspended until the entity-changes consumer is positioned: nothing is cached before
    # invalidations can reach it.
    cache = build_cache(settings, suspended=True)
    listener = EntityChangeListener(
        common,
        cache,
        poll_seconds=settings.invalidation_poll_seconds,
        fetch_wait_ms=settings.invalidation_fetch_wait_ms,
    )
    servicer = QueryServicer(build_reader(settings, store, cache))
    return ServiceDefinition(
        name="query",
        grpc_service_names=[SERVICE_NAME],
        register=partial(query_pb2_grpc.add_QueryServiceServicer_to_server, servicer),
        readiness_checks=[partial(check_bigtable, common)],
        workers=[listener],
        on_shutdown=[store.close],
    )


def main() -> int:
    return run_service("query", QuerySettings, build)
