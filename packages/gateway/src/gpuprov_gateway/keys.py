"""API keys: hashing, lookup, per-key token bucket and concurrency limit.

The config holds only ``sha256:<hex>`` of each key. API keys are high-entropy
random strings (``gpuprov-gateway hash-key --generate``), so a plain SHA-256 is
enough: a slow password hash (scrypt, PBKDF2) only protects low-entropy secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field

from gpuprov_gateway.config import KeyConfig, RateLimit


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return "sk-gw-" + secrets.token_urlsafe(32)


@dataclass
class TokenBucket:
    capacity: float
    refill_per_s: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def take(self, now: float | None = None) -> float:
        """Take one token; return 0 on success, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        if self.refill_per_s <= 0:
            return 3600.0
        return (1.0 - self.tokens) / self.refill_per_s


@dataclass
class Slots:
    """In-flight requests of one key id; shared across config reloads."""

    active: int = 0


@dataclass
class KeyState:
    config: KeyConfig
    bucket: TokenBucket
    slots: Slots = field(default_factory=Slots)

    def acquire(self) -> bool:
        if self.slots.active >= self.config.max_concurrent:
            return False
        self.slots.active += 1
        return True

    def release(self) -> None:
        self.slots.active = max(0, self.slots.active - 1)

    def allows_model(self, public_name: str) -> bool:
        m = self.config.models
        return "*" in m or public_name in m

    def retry_after(self, wait_s: float) -> int:
        return max(1, math.ceil(wait_s))


class KeyStore:
    """Keys by hash. Replaced on reload; bucket state carries over for unchanged keys."""

    def __init__(self, keys: tuple[KeyConfig, ...], previous: KeyStore | None = None) -> None:
        self._by_hash: dict[str, KeyState] = {}
        old = {s.config.id: s for s in previous._by_hash.values()} if previous else {}
        for k in keys:
            prev = old.get(k.id)
            if prev is not None and prev.config.rate == k.rate:
                bucket = prev.bucket
            else:
                bucket = _bucket(k.rate)
            state = KeyState(k, bucket, prev.slots if prev is not None else Slots())
            self._by_hash[k.hash] = state

    def lookup(self, presented: str) -> KeyState | None:
        h = hash_key(presented)
        for known, state in self._by_hash.items():
            if hmac.compare_digest(known, h):
                return state
        return None

    def all(self) -> list[KeyState]:
        return list(self._by_hash.values())


def _bucket(rate: RateLimit) -> TokenBucket:
    return TokenBucket(rate.capacity, rate.refill_per_s)
