"""Page tokens: round trip, and refusal of anything forged, altered or re-bound."""

from __future__ import annotations

import base64

import pytest
from eventpipe.core.errors import InvalidArgument
from eventpipe.core.page_tokens import PageTokenCodec

SECRET = b"0123456789abcdef-unit-test-secret"
BINDING = b'["tenant-a","user-1","enriched",null,null,[]]'
CURSOR = b"9223370269629175807#evt-42"


def codec(secret: bytes = SECRET) -> PageTokenCodec:
    return PageTokenCodec(secret, "eventpipe.query.v1.QueryService/ListEntityEvents")


def test_a_token_returns_the_cursor_it_was_issued_with() -> None:
    token = codec().issue(BINDING, CURSOR)
    assert codec().verify(token, BINDING) == CURSOR


def test_a_token_does_not_reveal_the_row_key_in_plain_text() -> None:
    assert b"evt-42" not in codec().issue(BINDING, CURSOR).encode()


def test_a_token_reused_with_other_parameters_is_refused() -> None:
    token = codec().issue(BINDING, CURSOR)
    other = b'["tenant-b","user-1","enriched",null,null,[]]'
    with pytest.raises(InvalidArgument) as error:
        codec().verify(token, other)
    assert error.value.violations[0].field == "page_token"


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = codec(b"another-secret-of-some-length").issue(BINDING, CURSOR)
    with pytest.raises(InvalidArgument):
        codec().verify(token, BINDING)


@pytest.mark.parametrize("position", [0, 5, 20, -1])
def test_a_token_with_any_character_changed_is_refused(position: int) -> None:
    token = codec().issue(BINDING, CURSOR)
    changed = "A" if token[position] != "A" else "B"
    altered = (
        token[:position] + changed + token[position + 1 :]
        if position != -1
        else token[:-1] + changed
    )
    with pytest.raises(InvalidArgument):
        codec().verify(altered, BINDING)


def test_a_token_with_a_swapped_cursor_is_refused() -> None:
    raw = base64.urlsafe_b64decode(codec().issue(BINDING, CURSOR) + "==")
    forged = raw[:17] + b"0000000000000000000#evt-1"
    token = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    with pytest.raises(InvalidArgument):
        codec().verify(token, BINDING)


@pytest.mark.parametrize("token", ["", "x", "not base64 !!", "A" * 2000, "AQ"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument):
        codec().verify(token, BINDING)


def test_a_token_with_stray_characters_is_refused_even_if_it_decodes_the_same() -> None:
    token = codec().issue(BINDING, CURSOR)
    with pytest.raises(InvalidArgument):
        codec().verify(token[:4] + "\n" + token[4:], BINDING)


def test_a_short_secret_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        PageTokenCodec(b"short", "eventpipe.query.v1.QueryService/ListEntityEvents")
