"""A stand-in for Triton's generate extension (POST /v2/models/{model}/generate_stream).

Deterministic output, one piece per "token":
    <think>\\nLet me think about it.\\n</think>\\n\\nThe answer is 42.
(without the leading <think> when the prompt already ends with one). Honours
max_tokens and stop_words; reports num_input_tokens / num_output_tokens on the
last chunk. Behaviour switches, found in text_input:
    [[fail]]  HTTP 500          [[error]] data: {"error": ...}
    [[break]] drop the connection after the first chunk
    [[slow]]  3 s before the first chunk    [[drip]] 0.15 s between chunks
    [[long]]  256 filler pieces in the answer
    [[hold]]  after four chunks (the gateway has streamed reasoning by then), wait for POST
              /admin/release: a request held open for as long as a test needs, however slow the machine
Admin: GET /admin/stats, POST /admin/reset, POST /admin/fail {"count": n}, POST /admin/release.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REASONING = ["\n", "Let", " me", " think", " about", " it", ".", "\n"]
ANSWER = ["The", " answer", " is", " 42", "."]
FIELDS = {"text_input", "max_tokens", "temperature", "top_p", "stop_words", "stream",
          "apply_chat_template", "random_seed"}

state = {"requests": 0, "fail": 0, "last_body": None, "token_delay": 0.0}
# Set by POST /admin/release: the held requests ([[hold]]) go on.
released = asyncio.Event()


def pieces(text: str) -> list[str]:
    think = [] if text.rstrip().endswith("<think>") else ["<think>"]
    answer = ANSWER + [f" w{i}" for i in range(256)] if "[[long]]" in text else ANSWER
    return think + REASONING + ["</think>", "\n\n"] + answer


async def generate_stream(request: Request) -> Response:
    state["requests"] += 1
    body = await request.json()
    state["last_body"] = body
    if request.path_params["model"] != "deepseek":
        return JSONResponse({"error": "unknown model"}, status_code=400)
    if set(body) - FIELDS or not isinstance(body.get("text_input"), str):
        return JSONResponse({"error": f"bad request fields {sorted(body)}"}, status_code=400)
    if body.get("apply_chat_template") is not False or body.get("stream") is not True:
        return JSONResponse({"error": "expected stream true, apply_chat_template false"}, 400)
    text = body["text_input"]
    if state["fail"] > 0:
        state["fail"] -= 1
        return JSONResponse({"error": "injected failure"}, status_code=500)
    if "[[fail]]" in text:
        return JSONResponse({"error": "injected failure"}, status_code=500)
    out = pieces(text)[: int(body.get("max_tokens", 16))]
    stops = [s for s in body.get("stop_words") or [] if s]
    n_in = len(text.split())

    async def events():  # noqa: ANN202
        if "[[error]]" in text:
            yield b'data: {"error": "injected error"}\n\n'
            return
        if "[[slow]]" in text:
            await asyncio.sleep(3.0)
        acc, sent = "", 0
        for i, p in enumerate(out):
            cut = None
            for s in stops:
                j = (acc + p).find(s)
                if j >= 0:
                    cut = j if cut is None else min(cut, j)
            if cut is not None:
                p = (acc + p)[:cut][len(acc):]
                if p:
                    sent += 1
                    yield _chunk(p)
                break
            acc += p
            sent += 1
            last = i == len(out) - 1
            yield _chunk(p, (n_in, sent) if last else None)
            if "[[hold]]" in text and i == 3:
                await released.wait()
            if "[[break]]" in text and i == 0:
                await asyncio.sleep(0.05)
                raise RuntimeError("stand-in: connection dropped on purpose")
            if "[[drip]]" in text:
                await asyncio.sleep(0.15)
            elif state["token_delay"]:
                await asyncio.sleep(state["token_delay"])
        else:
            return
        yield _chunk("", (n_in, sent))

    return StreamingResponse(events(), media_type="text/event-stream")


def _chunk(piece: str, counts: tuple[int, int] | None = None) -> bytes:
    obj: dict[str, object] = {"model_name": "deepseek", "model_version": "1", "text_output": piece}
    if counts:
        obj["num_input_tokens"], obj["num_output_tokens"] = counts
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def release(request: Request) -> Response:
    released.set()
    return JSONResponse({"ok": True})


async def ready(request: Request) -> Response:
    return Response(status_code=200)


async def stats(request: Request) -> Response:
    return JSONResponse({"requests": state["requests"], "last_body": state["last_body"]})


async def reset(request: Request) -> Response:
    state.update(requests=0, fail=0, last_body=None)
    released.clear()
    return JSONResponse({"ok": True})


async def fail(request: Request) -> Response:
    state["fail"] = int((await request.json()).get("count", 1))
    return JSONResponse({"ok": True})


app = Starlette(routes=[
    Route("/v2/models/{model}/generate_stream", generate_stream, methods=["POST"]),
    Route("/v2/health/ready", ready),
    Route("/admin/stats", stats),
    Route("/admin/reset", reset, methods=["POST"]),
    Route("/admin/fail", fail, methods=["POST"]),
    Route("/admin/release", release, methods=["POST"]),
])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token-delay", type=float, default=0.0)
    a = ap.parse_args()
    state["token_delay"] = a.token_delay
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="critical", access_log=False)


if __name__ == "__main__":
    main()
