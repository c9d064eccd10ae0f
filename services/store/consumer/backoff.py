"""Capped exponential backoff with full jitter (so restarted replicas do not retry in step)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float
    maximum: float
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``attempt`` (1-based): up to initial * 2**(n-1), capped."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        jitter = (rng or random).uniform(0.5, 1.0)
        return ceiling * jitter
