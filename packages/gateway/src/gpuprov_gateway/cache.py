"""Exact-match response cache for deterministic (temperature 0) requests, per key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache


@dataclass(frozen=True)
class CachedAnswer:
    reasoning: str
    content: str
    finish_reason: str
    usage: dict[str, Any]
    backend: str


class ResponseCache:
    def __init__(self, max_entries: int = 1000, ttl_s: float = 900.0) -> None:
        self._entries: TTLCache[str, CachedAnswer] = TTLCache(maxsize=max_entries, ttl=ttl_s)

    @staticmethod
    def key(key_id: str, request: dict[str, Any]) -> str:
        """Key id + the normalised request: there are no hits across tenants."""
        blob = json.dumps([key_id, request], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, k: str) -> CachedAnswer | None:
        return self._entries.get(k)

    def put(self, k: str, answer: CachedAnswer) -> None:
        self._entries[k] = answer

    def __len__(self) -> int:
        return len(self._entries)
