"""What the client does when the broker is unavailable: bounded exponential backoff with full jitter, and a
circuit breaker, so a broker outage is ridden out briefly and then fails fast. An unavailable broker is
never a reason to use another credential: a call that runs out of attempts raises."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .errors import CircuitOpen


@dataclass
class Backoff:
    """Attempt `n` (0-based) waits a uniformly random time in [0, min(cap, base·2ⁿ)] ("full jitter"), or the
    broker's `Retry-After` when it is longer but still within `cap`. `attempts` counts every try, the first
    included."""

    attempts: int = 6
    base: float = 0.1
    cap: float = 2.0

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        ceiling = min(self.cap, self.base * (2**attempt))
        wait = random.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap))
        return wait


class CircuitBreaker:
    """Closed while the broker answers. After `threshold` consecutive failed calls (each having spent its
    retries) it opens: calls fail with `CircuitOpen` without a request, for `cooldown` seconds. Then one call
    probes (half-open): success closes it, failure opens it again."""

    def __init__(self, threshold: int = 5, cooldown: float = 10.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._failures = 0
        self._opened_at: Optional[float] = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if time.monotonic() - self._opened_at >= self.cooldown:
                return "half-open"
            return "open"

    def before(self) -> None:
        """Raises `CircuitOpen` while open."""
        if self.state == "open":
            raise CircuitOpen("unavailable", "the circuit breaker is open: the broker failed repeatedly")

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold or self._opened_at is not None:
                self._opened_at = time.monotonic()
