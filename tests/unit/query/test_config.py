"""Query settings: the page-token secret rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from query.config import QuerySettings


def test_the_local_dev_secret_is_the_default_and_flagged() -> None:
    assert QuerySettings().uses_local_dev_secret


def test_production_refuses_to_start_with_the_local_dev_secret() -> None:
    with pytest.raises(ValidationError):
        QuerySettings(require_page_token_secret=True)


def test_a_real_secret_satisfies_production() -> None:
    settings = QuerySettings(
        require_page_token_secret=True, page_token_secret="a-real-secret-from-the-vault"
    )
    assert not settings.uses_local_dev_secret


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError):
        QuerySettings(page_token_secret="short")
