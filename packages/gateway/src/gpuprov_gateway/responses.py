"""OpenAI-shaped bodies: chat.completion, chat.completion.chunk, SSE framing."""

from __future__ import annotations

import json
from typing import Any

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def completion(
    cid: str, created: int, model: str, reasoning: str, content: str, finish: str,
    usage: dict[str, Any],
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage,
        "system_fingerprint": None,
    }


def chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        "system_fingerprint": None,
    }
    if with_usage_field:
        out["usage"] = None
    return out


def usage_chunk(cid: str, created: int, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
        "system_fingerprint": None,
    }


def delta(reasoning: str, content: str) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if reasoning:
        d["reasoning_content"] = reasoning
    if content:
        d["content"] = content
    return d
