"""Reading server-sent events from an httpx streaming response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


async def data_lines(resp: httpx.Response) -> AsyncIterator[str]:
    """Yield the payload of each ``data:`` line (comments and other fields are skipped)."""
    async for line in resp.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def parse_json(payload: str | bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
