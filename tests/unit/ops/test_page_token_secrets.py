"""Production page-token secrets: required where the prod overlay says so, shared by replicas.

Today's failure modes, each shut here: prod signing with the public development default (so a
token forged with it was accepted), and each store replica drawing a random key of its own (so
paging broke whenever the next page landed on another replica).
"""

from __future__ import annotations

import pytest
from enrich.config import EnrichSettings
from eventpipe.core.config import ConfigError, load_settings
from eventpipe.core.errors import EventPipeError
from eventpipe.core.page_tokens import PageTokenCodec
from query.config import LOCAL_DEV_PAGE_TOKEN_SECRET, QuerySettings
from store.config import StoreSettings

LIST_RAW_EVENTS = "eventpipe.store.v1.StoreService/ListRawEvents"
LIST_ENTITY_EVENTS = "eventpipe.query.v1.QueryService/ListEntityEvents"
BINDING = b"tenant-a\x00entity-1"
PROD_SECRET = "a-secret-from-the-cluster-secret-store"


def codec(secret: str, rpc: str) -> PageTokenCodec:
    return PageTokenCodec(secret.encode(), rpc)


@pytest.mark.parametrize(
    ("settings_class", "prefix"),
    [
        (QuerySettings, "EVENTPIPE_QUERY_"),
        (StoreSettings, "EVENTPIPE_STORE_"),
        (EnrichSettings, "EVENTPIPE_ENRICH_"),
    ],
    ids=["query, instead of signing with the public development secret", "store", "enrich"],
)
def test_in_prod_a_service_without_its_shared_secret_refuses_to_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, settings_class: type, prefix: str
) -> None:
    monkeypatch.setenv(f"{prefix}REQUIRE_PAGE_TOKEN_SECRET", "true")
    monkeypatch.delenv(f"{prefix}PAGE_TOKEN_SECRET", raising=False)

    with pytest.raises(ConfigError) as failure:
        load_settings(settings_class)

    assert f"{prefix}PAGE_TOKEN_SECRET" in failure.value.message


def test_query_in_prod_refuses_a_token_forged_with_the_public_development_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTPIPE_QUERY_REQUIRE_PAGE_TOKEN_SECRET", "true")
    monkeypatch.setenv("EVENTPIPE_QUERY_PAGE_TOKEN_SECRET", PROD_SECRET)
    settings = load_settings(QuerySettings)
    served = codec(settings.page_token_secret.get_secret_value(), LIST_ENTITY_EVENTS)
    forged = codec(LOCAL_DEV_PAGE_TOKEN_SECRET, LIST_ENTITY_EVENTS).issue(BINDING, b"row-9")

    with pytest.raises(EventPipeError) as refused:
        served.verify(forged, BINDING)

    assert "page_token" in str(refused.value)


def test_the_store_refuses_a_secret_too_short_to_sign_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_STORE_PAGE_TOKEN_SECRET", "short")

    with pytest.raises(ConfigError) as failure:
        load_settings(StoreSettings)

    assert "at least 16" in failure.value.message


def test_store_replicas_given_the_one_secret_accept_each_others_page_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENTPIPE_STORE_REQUIRE_PAGE_TOKEN_SECRET", "true")
    monkeypatch.setenv("EVENTPIPE_STORE_PAGE_TOKEN_SECRET", PROD_SECRET)
    replicas = [load_settings(StoreSettings) for _ in range(2)]
    first, second = (
        codec(replica.page_token_secret.get_secret_value(), LIST_RAW_EVENTS)  # type: ignore[union-attr]
        for replica in replicas
    )

    token = first.issue(BINDING, b"row-41")

    assert second.verify(token, BINDING) == b"row-41"
    with pytest.raises(EventPipeError):
        codec("another-replicas-own-random-key", LIST_RAW_EVENTS).verify(token, BINDING)


def test_outside_production_the_store_still_starts_without_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EVENTPIPE_STORE_PAGE_TOKEN_SECRET", raising=False)
    monkeypatch.delenv("EVENTPIPE_STORE_REQUIRE_PAGE_TOKEN_SECRET", raising=False)

    assert load_settings(StoreSettings).page_token_secret is None
