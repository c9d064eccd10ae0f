"""Page tokens are tamper-evident; backoff grows exponentially up to its cap."""

from __future__ import annotations

import random

import pytest
from eventpipe.core.errors import InvalidArgument
from store.consumer.backoff import Backoff
from store.page_tokens import PageTokenCodec


def test_a_page_token_round_trips_the_last_key() -> None:
    codec = PageTokenCodec(b"secret")
    token = codec.encode(b"\x00key#1", "params")
    assert codec.decode(token, "params") == b"\x00key#1"


@pytest.mark.parametrize("token", ["", "garbage", "a.b", "e30.AAAA"])
def test_a_token_this_service_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        PageTokenCodec(b"secret").decode(token, "params")
    assert refused.value.violations[0].field == "page_token"


def test_a_token_signed_with_another_key_or_reused_with_other_parameters_is_refused() -> None:
    token = PageTokenCodec(b"other").encode(b"k", "params")
    with pytest.raises(InvalidArgument):
        PageTokenCodec(b"secret").decode(token, "params")
    mine = PageTokenCodec(b"secret").encode(b"k", "params")
    with pytest.raises(InvalidArgument, match="other parameters"):
        PageTokenCodec(b"secret").decode(mine, "different")


def test_backoff_doubles_then_stays_under_its_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(1, 10)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.4 <= delays[3] <= 0.8
    assert all(d <= 2.0 for d in delays) and delays[-1] >= 1.0
