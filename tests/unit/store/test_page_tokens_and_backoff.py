"""Page tokens are tamper-evident; backoff grows exponentially up to its cap."""

from __future__ import annotations

import random

import pytest
from eventpipe.core.errors import InvalidArgument
from eventpipe.core.page_tokens import PageTokenCodec
from store.consumer.backoff import Backoff
from store.server import LIST_RAW_EVENTS


def _codec(key: bytes) -> PageTokenCodec:
    return PageTokenCodec(key.ljust(16, b"."), LIST_RAW_EVENTS)


def test_a_page_token_round_trips_the_last_key() -> None:
    codec = _codec(b"secret")
    token = codec.issue(b"params", b"\x00key#1")
    assert codec.verify(token, b"params") == b"\x00key#1"


@pytest.mark.parametrize("token", ["", "garbage", "a.b", "e30.AAAA"])
def test_a_token_this_service_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        _codec(b"secret").verify(token, b"params")
    assert refused.value.violations[0].field == "page_token"


def test_a_token_signed_with_another_key_or_reused_with_other_parameters_is_refused() -> None:
    token = _codec(b"other").issue(b"params", b"k")
    with pytest.raises(InvalidArgument):
        _codec(b"secret").verify(token, b"params")
    mine = _codec(b"secret").issue(b"params", b"k")
    with pytest.raises(InvalidArgument, match="other parameters"):
        _codec(b"secret").verify(mine, b"different")


def test_backoff_doubles_then_stays_under_its_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(1, 10)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.4 <= delays[3] <= 0.8
    assert all(d <= 2.0 for d in delays) and delays[-1] >= 1.0
