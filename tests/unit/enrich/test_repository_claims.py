"""The claim owner check of the enrich job store (no Bigtable: refused before any call)."""

from __future__ import annotations

from typing import Any

import pytest
from enrich.adapters.repository import CLAIM_OWNER_PATTERN, BigtableJobStore


class _NoTable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the table was used ({name}) for a refused owner")


@pytest.mark.parametrize("owner", ["owner\n", "", "own er", "o/1", "x" * 129])
def test_a_claim_owner_outside_the_pattern_is_refused_whole(owner: str) -> None:
    store = BigtableJobStore(_NoTable())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="claim owner"):
        store.claim_window("acme", "j1", 0, owner, 0, 1)


def test_a_plain_owner_name_matches_the_pattern() -> None:
    assert CLAIM_OWNER_PATTERN.fullmatch("replica-1.pod_a")
    assert not CLAIM_OWNER_PATTERN.fullmatch("replica-1\n")
