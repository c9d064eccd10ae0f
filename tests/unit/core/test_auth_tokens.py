"""Token verification without a server: the verified-token cache and its bounds, the JWKS kept
through provider outages, date claims typed as Envoy types them, operator tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from eventpipe.core import auth
from eventpipe.core.auth import (
    AuthSettings,
    Principal,
    TokenCache,
    TokenError,
    TokenVerifier,
    generate_local_keys,
    mint_token,
)
from eventpipe.core.waiting import wait_until


class Provider:
    """An in-memory JWKS source that can fail or rotate keys."""

    def __init__(self, *jwks_paths: Path) -> None:
        self.keys = [json.loads(p.read_text())["keys"][0] for p in jwks_paths]
        self.down = False
        self.fetches = 0

    def __call__(self) -> jwt.PyJWKSet:
        self.fetches += 1
        if self.down:
            raise ConnectionError("identity provider unreachable")
        return jwt.PyJWKSet.from_dict({"keys": self.keys})


@pytest.fixture
def key_pairs(tmp_path: Path) -> list[tuple[bytes, Path]]:
    pairs = []
    for name in ("first", "second"):
        private_path, jwks_path = generate_local_keys(tmp_path / name)
        pairs.append((private_path.read_bytes(), jwks_path))
    return pairs


def _verifier(provider: Provider, **settings: Any) -> TokenVerifier:
    verifier = TokenVerifier(AuthSettings(jwks_url="http://unused", **settings), source=provider)
    assert verifier.keys.refresh()
    return verifier


def _token(pair: tuple[bytes, Path], **overrides: Any) -> str:
    args: dict[str, Any] = {"tenant_id": "acme", "scopes": ["ingest"]}
    args.update(overrides)
    return mint_token(pair[0], pair[1], **args)


def _signed(pair: tuple[bytes, Path], **claims: Any) -> str:
    kid = json.loads(pair[1].read_text())["keys"][0]["kid"]
    body = {"iss": "eventpipe-local", "aud": "eventpipe", "tenant_id": "acme", **claims}
    return jwt.encode(body, pair[0], algorithm="RS256", headers={"kid": kid})


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    return calls


def test_a_steady_client_pays_for_one_signature_check(
    key_pairs: list[tuple[bytes, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = _verifier(Provider(key_pairs[0][1]))
    decodes = _count_decodes(monkeypatch)
    token = _token(key_pairs[0])

    principals = {verifier.verify(token) for _ in range(100)}

    assert principals == {Principal("developer", "acme", frozenset({"ingest"}))}
    assert decodes[0] == 1


def test_a_cached_token_is_trusted_no_longer_than_its_expiry_nor_the_cache_bound() -> None:
    now = [1000.0]
    cache = TokenCache(max_entries=10, max_seconds=60, clock=lambda: now[0])
    principal = Principal("s", "acme", frozenset())
    cache.put(b"expires-soon", principal, "kid", expires_at=1010.0)
    cache.put(b"expires-late", principal, "kid", expires_at=5000.0)

    now[0] = 1009.0
    assert cache.get(b"expires-soon") == principal
    now[0] = 1010.0
    assert cache.get(b"expires-soon") is None
    assert cache.get(b"expires-late") == principal
    now[0] = 1060.0
    assert cache.get(b"expires-late") is None


def test_the_cache_holds_at_most_its_size_dropping_the_least_recently_used() -> None:
    cache = TokenCache(max_entries=2, max_seconds=60)
    principal = Principal("s", "acme", frozenset())
    expires = time.time() + 600
    cache.put(b"a", principal, "kid", expires)
    cache.put(b"b", principal, "kid", expires)
    assert cache.get(b"a") == principal  # a is now the most recently used
    cache.put(b"c", principal, "kid", expires)

    assert len(cache) == 2
    assert cache.get(b"b") is None
    assert cache.get(b"a") == principal and cache.get(b"c") == principal


def test_a_key_dropped_from_the_jwks_stops_its_cached_tokens_at_the_next_refresh(
    key_pairs: list[tuple[bytes, Path]],
) -> None:
    provider = Provider(key_pairs[0][1], key_pairs[1][1])
    verifier = _verifier(provider)
    old, new = _token(key_pairs[0]), _token(key_pairs[1])
    verifier.verify(old)
    verifier.verify(new)

    provider.keys = provider.keys[1:]  # the first key is rotated out
    assert verifier.keys.refresh()

    with pytest.raises(TokenError):
        verifier.verify(old)
    assert verifier.verify(new).tenant_id == "acme"


def test_the_last_good_keys_survive_an_identity_provider_outage(
    key_pairs: list[tuple[bytes, Path]],
) -> None:
    provider = Provider(key_pairs[0][1])
    verifier = _verifier(provider, token_cache_size=0)
    provider.down = True

    assert not verifier.keys.refresh()
    assert verifier.verify(_token(key_pairs[0])).tenant_id == "acme"
    verifier.keys.check_ready()


def test_an_unknown_key_id_is_refused_at_once_and_asks_for_a_background_fetch(
    key_pairs: list[tuple[bytes, Path]],
) -> None:
    provider = Provider(key_pairs[0][1])
    verifier = _verifier(provider)
    fetches = provider.fetches

    with pytest.raises(TokenError, match="unknown key id"):
        verifier.verify(_token(key_pairs[1]))

    assert provider.fetches == fetches  # the caller did not fetch; the refresher will
    assert verifier.keys._wake.is_set()


def test_a_service_without_any_key_yet_is_not_ready(key_pairs: list[tuple[bytes, Path]]) -> None:
    provider = Provider(key_pairs[0][1])
    provider.down = True
    verifier = TokenVerifier(AuthSettings(jwks_url="http://unused"), source=provider)

    assert not verifier.keys.refresh()
    with pytest.raises(RuntimeError, match="no JWKS signing keys"):
        verifier.keys.check_ready()


def test_the_background_refresh_fetches_again_and_stops(
    key_pairs: list[tuple[bytes, Path]],
) -> None:
    provider = Provider(key_pairs[0][1])
    verifier = TokenVerifier(
        AuthSettings(jwks_url="http://unused", jwks_refresh_seconds=1), source=provider
    )
    verifier.start()
    try:
        wait_until(lambda: provider.fetches >= 2, timeout=10, what="a second JWKS fetch")
        verifier.keys.check_ready()
    finally:
        verifier.stop()


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "4102444800"),
        ("nbf", "0"),
        ("iat", "1700000000"),
        ("exp", True),
        ("exp", -1),
        ("nbf", 2**64),
        ("iat", [1]),
    ],
)
def test_a_date_claim_that_is_not_a_number_in_range_is_refused_as_envoy_refuses_it(
    key_pairs: list[tuple[bytes, Path]], claim: str, value: object
) -> None:
    verifier = _verifier(Provider(key_pairs[0][1]))
    now = int(time.time())
    claims: dict[str, Any] = {"exp": now + 600, "nbf": now - 10, "iat": now, claim: value}

    with pytest.raises(TokenError):
        verifier.verify(_signed(key_pairs[0], **claims))


def test_fractional_dates_and_an_iat_ahead_of_the_clock_are_accepted_as_envoy_accepts_them(
    key_pairs: list[tuple[bytes, Path]],
) -> None:
    verifier = _verifier(Provider(key_pairs[0][1]))
    now = time.time()
    token = _signed(key_pairs[0], exp=now + 600.5, nbf=now - 0.5, iat=now + 3600)

    assert verifier.verify(token).tenant_id == "acme"


def test_a_token_without_exp_is_refused(key_pairs: list[tuple[bytes, Path]]) -> None:
    verifier = _verifier(Provider(key_pairs[0][1]))
    with pytest.raises(TokenError):
        verifier.verify(_signed(key_pairs[0], iat=int(time.time())))


def test_only_an_operator_token_may_go_without_a_tenant(
    key_pairs: list[tuple[bytes, Path]],
) -> None:
    verifier = _verifier(Provider(key_pairs[0][1]))

    operator = verifier.verify(_token(key_pairs[0], tenant_id=None, scopes=["operator"]))
    assert operator.tenant_id is None and operator.scopes == {"operator"}
    with pytest.raises(TokenError, match="no tenant"):
        verifier.verify(_token(key_pairs[0], tenant_id=None, scopes=["admin"]))
