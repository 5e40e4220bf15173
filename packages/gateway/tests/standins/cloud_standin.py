"""A stand-in for DeepSeek's cloud API (OpenAI-compatible /chat/completions).

Checks the bearer key against $CLOUD_STANDIN_KEY. Answers "Cloud answer." and, for
model deepseek-reasoner, reasoning_content "Cloud reasoning.". Streams with
include_usage. GET /admin/stats counts requests.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

state = {"requests": 0, "last_body": None}


async def chat(request: Request) -> Response:
    state["requests"] += 1
    if request.headers.get("authorization") != f"Bearer {os.environ['CLOUD_STANDIN_KEY']}":
        return JSONResponse({"error": {"message": "bad key", "type": "authentication_error",
                                       "param": None, "code": "invalid_api_key"}}, 401)
    body = await request.json()
    state["last_body"] = body
    model = body.get("model", "deepseek-chat")
    reasoning = "Cloud reasoning." if model == "deepseek-reasoner" else ""
    content = "Cloud answer."
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12,
             "prompt_cache_hit_tokens": 3, "prompt_cache_miss_tokens": 4,
             "completion_tokens_details": {"reasoning_tokens": 2 if reasoning else 0}}
    cid, created = "cloud-1", int(time.time())
    if not body.get("stream"):
        msg = {"role": "assistant", "content": content}
        if reasoning:
            msg["reasoning_content"] = reasoning
        return JSONResponse({"id": cid, "object": "chat.completion", "created": created,
                             "model": model, "usage": usage,
                             "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]})

    def frame(delta: dict, finish: str | None = None) -> bytes:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    async def events():  # noqa: ANN202
        yield frame({"role": "assistant", "content": ""})
        if reasoning:
            yield frame({"reasoning_content": reasoning, "content": None})
        for piece in ("Cloud", " answer."):
            yield frame({"content": piece})
        yield frame({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            u = {"id": cid, "object": "chat.completion.chunk", "created": created,
                 "model": model, "choices": [], "usage": usage}
            yield b"data: " + json.dumps(u).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def stats(request: Request) -> Response:
    return JSONResponse({"requests": state["requests"], "last_body": state["last_body"]})


app = Starlette(routes=[
    Route("/v1/chat/completions", chat, methods=["POST"]),
    Route("/chat/completions", chat, methods=["POST"]),
    Route("/admin/stats", stats),
])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="critical", access_log=False)


if __name__ == "__main__":
    main()
