"""Backends: Triton's generate_stream extension and OpenAI-compatible cloud endpoints.

Triton's token stream is read with aiohttp (its C-accelerated HTTP parser): measured on the
stand-in, reading an SSE event cost under a third of the CPU it costs through httpx/httpcore, whose
per-read timeout scope and pure-Python HTTP parser were a third of the gateway's CPU at 16 streams.
The cloud endpoints and readiness probes stay on httpx.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping

import aiohttp
import httpx

from gpuprov_gateway.breaker import CircuitBreaker
from gpuprov_gateway.config import CloudConfig, TritonConfig
from gpuprov_gateway.events import BackendError, Delta, Event, Finish, GenRequest, Usage
from gpuprov_gateway.sse import data_lines, parse_json


def _status_error(status: int, headers: Mapping[str, str], name: str) -> BackendError:
    """A backend's non-200 answer: 429 and 5xx may be retried (after Retry-After, when given)."""
    ra = headers.get("retry-after")
    try:
        retry_after = float(ra) if ra else None
    except ValueError:
        retry_after = None
    retryable = status == 429 or status >= 500
    return BackendError(f"{name}: HTTP {status}", retryable=retryable, retry_after=retry_after)


class Backend:
    kind = "base"
    tier = "local"

    def __init__(self, name: str, breaker: CircuitBreaker) -> None:
        self.name = name
        self.breaker = breaker
        self.outstanding = 0

    def generate(self, client: httpx.AsyncClient, req: GenRequest) -> AsyncGenerator[Event, None]:
        raise NotImplementedError

    async def ready(self, client: httpx.AsyncClient) -> bool:
        return self.breaker.state != "open"


class TritonBackend(Backend):
    kind = "triton"

    def __init__(
        self, cfg: TritonConfig, breaker: CircuitBreaker, tier: str,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        super().__init__(cfg.name, breaker)
        self.url = cfg.url
        self.model = cfg.model
        self.tier = tier
        self.session = session  # the router's, made on first use inside the event loop

    def body(self, req: GenRequest) -> dict[str, object]:
        body: dict[str, object] = {
            "text_input": req.prompt,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stop_words": req.stop,
            "stream": True,
            "apply_chat_template": False,
        }
        if req.seed is not None:
            body["random_seed"] = req.seed
        return body

    async def generate(self, client: httpx.AsyncClient, req: GenRequest) -> AsyncGenerator[Event, None]:
        url = f"{self.url}/v2/models/{self.model}/generate_stream"
        try:
            async with self.session().post(url, json=self.body(req)) as resp:
                if resp.status != 200:
                    await resp.read()
                    raise _status_error(resp.status, resp.headers, self.name)
                usage = Usage()
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    chunk = parse_json(line[5:])
                    if chunk is None:
                        raise BackendError(f"{self.name}: malformed chunk", retryable=True)
                    if "error" in chunk:
                        raise BackendError(f"{self.name}: {chunk['error']}", retryable=True)
                    if isinstance(chunk.get("num_input_tokens"), int):
                        usage.prompt_tokens = chunk["num_input_tokens"]
                    if isinstance(chunk.get("num_output_tokens"), int):
                        usage.completion_tokens = chunk["num_output_tokens"]
                    piece = chunk.get("text_output")
                    if isinstance(piece, str) and piece:
                        yield Delta(raw=piece)
                yield usage
                yield Finish(None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:  # ValueError: a line over read_bufsize
            raise BackendError(f"{self.name}: {type(e).__name__}: {e}", retryable=True) from e

    async def ready(self, client: httpx.AsyncClient) -> bool:
        if self.breaker.state == "open":
            return False
        # A connection of its own, closed after the answer: an idle one left in httpx's pool stays
        # open until the pool's next use, and Triton's stop waits (30 s, then exit 1) for every open
        # connection.
        try:
            r = await client.get(f"{self.url}/v2/health/ready", timeout=1.0, headers={"Connection": "close"})
        except httpx.HTTPError:
            return False
        return r.status_code == 200


class CloudBackend(Backend):
    kind = "openai"
    tier = "cloud"

    def __init__(self, cfg: CloudConfig, breaker: CircuitBreaker) -> None:
        super().__init__(cfg.name, breaker)
        self.base_url = cfg.base_url
        self.api_key = cfg.api_key
        self.model = cfg.model
        self.model_map = cfg.model_map

    def body(self, req: GenRequest) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model_map.get(req.public_model, self.model),
            "messages": req.messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if req.stop:
            body["stop"] = req.stop
        if req.seed is not None:
            body["seed"] = req.seed
        if req.user is not None:
            body["user"] = req.user
        return body

    async def generate(self, client: httpx.AsyncClient, req: GenRequest) -> AsyncGenerator[Event, None]:
        url = f"{self.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {self.api_key}"}
        try:
            async with client.stream("POST", url, json=self.body(req), headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise _status_error(resp.status_code, resp.headers, self.name)
                finish: str | None = None
                usage = Usage()
                async for payload in data_lines(resp):
                    if payload == "[DONE]":
                        break
                    chunk = parse_json(payload)
                    if chunk is None:
                        raise BackendError(f"{self.name}: malformed chunk", retryable=True)
                    if "error" in chunk:
                        raise BackendError(f"{self.name}: {chunk['error']}", retryable=True)
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        r = delta.get("reasoning_content") or ""
                        c = delta.get("content") or ""
                        if r or c:
                            yield Delta(reasoning=r, content=c)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    u = chunk.get("usage")
                    if isinstance(u, dict):
                        usage.prompt_tokens = u.get("prompt_tokens")
                        usage.completion_tokens = u.get("completion_tokens")
                        usage.cache_hit_tokens = u.get("prompt_cache_hit_tokens")
                        details = u.get("completion_tokens_details") or {}
                        usage.reasoning_tokens = details.get("reasoning_tokens")
                yield usage
                yield Finish(finish if finish in ("stop", "length") else None)
        except httpx.HTTPError as e:
            raise BackendError(f"{self.name}: {type(e).__name__}: {e}", retryable=True) from e
