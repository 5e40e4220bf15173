"""Per-backend circuit breaker: open after N consecutive failures, half-open probe after a cool-down."""

from __future__ import annotations

import time

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
            self.probing = False
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.probing = False

    def failure(self, now: float | None = None) -> None:
        self.consecutive += 1
        self.probing = False
        if self.state == HALF_OPEN or self.consecutive >= self.threshold:
            self.state = OPEN
            self.opened_at = time.monotonic() if now is None else now

    def retry_in(self, now: float | None = None) -> float:
        if self.state != OPEN:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self.cooldown_s - (now - self.opened_at))
