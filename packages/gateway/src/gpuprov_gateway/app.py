"""The API application (Starlette): chat completions, models, admin, health."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpuprov_gateway import responses as R
from gpuprov_gateway.cache import CachedAnswer, ResponseCache
from gpuprov_gateway.errors import APIError, bad_request, forbidden, rate_limited, unauthorized
from gpuprov_gateway.events import GenRequest
from gpuprov_gateway.gateway import Gateway
from gpuprov_gateway.generation import Generation
from gpuprov_gateway.keys import KeyState
from gpuprov_gateway.pump import END, TIMEOUT, Pump
from gpuprov_gateway.router import DeadlineExceeded, NoBackend, RouteInfo, StreamBroken
from gpuprov_gateway.validate import ChatParams, parse_chat

log = logging.getLogger("gpuprov_gateway")


@dataclass
class Ctx:
    """One request's facts, for the audit line, metrics and response headers."""

    request_id: str
    client: str | None
    start: float = field(default_factory=time.monotonic)
    key: KeyState | None = None
    model: str | None = None
    status: int = 200
    cache: str | None = None
    stream: bool | None = None
    info: RouteInfo = field(default_factory=RouteInfo)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    text: dict[str, Any] | None = None
    held: bool = False

    def release(self) -> None:
        """Give back the key's concurrency slot, once."""
        if self.held and self.key is not None:
            self.held = False
            self.key.release()

    def headers(self) -> dict[str, str]:
        h = {"X-Request-Id": self.request_id}
        if self.cache:
            h["X-Cache"] = self.cache
        if self.info.backend:
            h["X-Backend"] = self.info.backend
        return h


def _error_type(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, NoBackend):
        return APIError(503, str(e), type_="service_unavailable", code="no_backend",
                        retry_after=e.retry_after)
    if isinstance(e, DeadlineExceeded):
        return APIError(504, str(e), type_="timeout", code="deadline_exceeded")
    log.exception("internal error", exc_info=e)
    return APIError(500, "internal error", type_="server_error", code="internal_error")


class Api:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    # --- shared steps -------------------------------------------------------------
    def authenticate(self, request: Request) -> KeyState:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        key = self.gw.keys.lookup(token.strip())
        if key is None:
            raise unauthorized("Unknown API key.")
        return key

    def finish(self, ctx: Ctx) -> None:
        gw = self.gw
        duration = time.monotonic() - ctx.start
        info = ctx.info
        backend = info.backend or ("cache" if ctx.cache == "hit" else "none")
        key_id = ctx.key.config.id if ctx.key else "-"
        model = ctx.model or "-"
        m = gw.metrics
        m.requests.labels(key_id, model, str(ctx.status), backend).inc()
        m.duration.labels(model, backend).observe(duration)
        ttft = None
        if info.first_token_at is not None:
            ttft = info.first_token_at - ctx.start
            m.ttft.labels(model, backend).observe(ttft)
        if ctx.prompt_tokens or ctx.completion_tokens:
            m.tokens.labels(key_id, model, "prompt").inc(ctx.prompt_tokens)
            m.tokens.labels(key_id, model, "completion").inc(ctx.completion_tokens)
        if gw.audit is None:
            return
        record = {
            "request_id": ctx.request_id,
            "key_id": ctx.key.config.id if ctx.key else None,
            "client": ctx.client,
            "model": ctx.model,
            "backend": info.backend or ("cache" if ctx.cache == "hit" else None),
            "status": ctx.status,
            "stream": ctx.stream,
            "prompt_tokens": ctx.prompt_tokens,
            "completion_tokens": ctx.completion_tokens,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
            "duration_ms": round(duration * 1000, 1),
            "cache": ctx.cache,
            "cache_hit": ctx.cache == "hit",
            "fallback_reason": info.fallback_reason,
            "error": ctx.error,
        }
        try:
            gw.audit.write(record, ctx.text if gw.cfg.audit_store_text else None)
        except OSError:
            log.exception("audit write failed")

    def fail(self, ctx: Ctx, e: Exception) -> Response:
        err = _error_type(e)
        ctx.status = err.status
        ctx.error = err.code
        self.finish(ctx)
        return err.response(ctx.headers())

    # --- /v1/chat/completions -----------------------------------------------------
    async def chat(self, request: Request) -> Response:
        ctx = Ctx(uuid.uuid4().hex, request.client.host if request.client else None)
        try:
            key = ctx.key = self.authenticate(request)
            wait = key.bucket.take()
            if wait > 0:
                self.gw.metrics.rate_limited.labels(key.config.id, "bucket").inc()
                raise rate_limited("Rate limit reached for this key.", key.retry_after(wait))
            if not key.acquire():
                self.gw.metrics.rate_limited.labels(key.config.id, "concurrency").inc()
                raise rate_limited("Too many concurrent requests for this key.", 1)
            ctx.held = True
            params, req = await self.prepare(request, ctx)
            # From here on the slot is released when the response is done.
            return await self.respond(request, ctx, key, params, req)
        except Exception as e:
            ctx.release()
            return self.fail(ctx, e)

    async def prepare(self, request: Request, ctx: Ctx) -> tuple[ChatParams, GenRequest]:
        gw = self.gw
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("request body is not valid JSON", None, "invalid_json") from None
        params = parse_chat(body)
        ctx.model, ctx.stream = params.model, params.stream
        if gw.resolve(params.model) is None:
            raise APIError(404, f"The model '{params.model}' does not exist.", param="model",
                           code="model_not_found")
        assert ctx.key is not None
        if not ctx.key.allows_model(params.model):
            raise forbidden(f"This key may not use the model '{params.model}'.", "model")
        mc = gw.cfg.model
        prompt = gw.renderer.render(params.messages)
        n_prompt = gw.renderer.count(prompt)
        if n_prompt >= mc.context_length:
            raise bad_request(
                f"The prompt is {n_prompt} tokens; this model's context is {mc.context_length}.",
                "messages", "context_length_exceeded",
            )
        if params.max_tokens is not None and params.max_tokens > mc.max_output_tokens:
            raise bad_request(
                f"max_tokens is {params.max_tokens}; at most {mc.max_output_tokens} is allowed.",
                "max_tokens", "invalid_value",
            )
        room = mc.context_length - n_prompt
        max_tokens = params.max_tokens or min(mc.default_max_tokens, room)
        if max_tokens > room:
            raise bad_request(
                f"prompt ({n_prompt}) + max_tokens ({max_tokens}) exceed the context "
                f"({mc.context_length}).", "max_tokens", "context_length_exceeded",
            )
        ctx.prompt_tokens = n_prompt
        req = GenRequest(
            public_model=params.model, messages=params.messages, prompt=prompt,
            prompt_tokens=n_prompt, max_tokens=max_tokens, temperature=params.temperature,
            top_p=params.top_p, stop=params.stop, seed=params.seed, user=params.user,
        )
        params.max_tokens = max_tokens
        return params, req

    def cache_lookup(self, request: Request, ctx: Ctx, params: ChatParams) -> str | None:
        gw = self.gw
        cc = request.headers.get("cache-control", "").lower()
        if not gw.cfg.cache_enabled or params.temperature != 0 or "no-cache" in cc \
                or "no-store" in cc:
            ctx.cache = "bypass"
            gw.metrics.cache.labels("bypass").inc()
            return None
        assert ctx.key is not None
        return ResponseCache.key(ctx.key.config.id, params.cache_view())

    async def respond(
        self, request: Request, ctx: Ctx, key: KeyState, params: ChatParams, req: GenRequest
    ) -> Response:
        gw = self.gw
        ck = self.cache_lookup(request, ctx, params)
        cid = f"chatcmpl-{ctx.request_id}"
        created = int(time.time())
        if ck is not None:
            hit = gw.cache.get(ck)
            ctx.cache = "hit" if hit else "miss"
            gw.metrics.cache.labels(ctx.cache).inc()
            if hit:
                return self.replay(ctx, key, params, hit, cid, created)
        deadline = time.monotonic() + gw.cfg.deadline_s
        gen = Generation(gw.renderer, req)
        agen = gw.router.stream(req, key.config.may_fallback, deadline, not params.stream, ctx.info)
        pump = Pump(agen)
        if not params.stream:
            return await self.complete(ctx, key, params, gen, pump, deadline, cid, created, ck)
        # Wait for the first item up to one keep-alive interval before sending headers,
        # so that a fast failure still gets a proper status code.
        try:
            first = await pump.next(min(gw.cfg.keepalive_s, max(0.0, deadline - time.monotonic())))
        except Exception:
            await pump.close()
            raise
        body = self.stream_body(ctx, key, params, gen, pump, first, deadline, cid, created, ck)
        headers = ctx.headers()
        headers["Cache-Control"] = "no-cache"
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    def remember(self, ck: str | None, gen: Generation, usage: dict[str, Any], ctx: Ctx) -> None:
        if ck is not None and ctx.status == 200:
            self.gw.cache.put(ck, CachedAnswer(gen.reasoning_text, gen.content_text,
                                               gen.finish_reason(), usage, ctx.info.backend or ""))

    def note_text(self, ctx: Ctx, params: ChatParams, gen: Generation | None,
                  hit: CachedAnswer | None = None) -> None:
        if not self.gw.cfg.audit_store_text:
            return
        ctx.text = {
            "messages": params.messages,
            "reasoning": hit.reasoning if hit else (gen.reasoning_text if gen else ""),
            "content": hit.content if hit else (gen.content_text if gen else ""),
        }

    async def complete(
        self, ctx: Ctx, key: KeyState, params: ChatParams, gen: Generation, pump: Pump,
        deadline: float, cid: str, created: int, ck: str | None,
    ) -> Response:
        try:
            while True:
                item = await pump.next(max(0.0, deadline - time.monotonic()))
                if item is END:
                    break
                if item is TIMEOUT:
                    raise DeadlineExceeded("request deadline exceeded")
                gen.on_event(item)
                if gen.stopped:
                    break
            gen.close()
        finally:
            await pump.close()
            ctx.release()
        usage = gen.usage_dict()
        ctx.prompt_tokens, ctx.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        self.remember(ck, gen, usage, ctx)
        self.note_text(ctx, params, gen)
        self.finish(ctx)
        body = R.completion(cid, created, params.model, gen.reasoning_text, gen.content_text,
                            gen.finish_reason(), usage)
        return JSONResponse(body, headers=ctx.headers())

    def replay(
        self, ctx: Ctx, key: KeyState, params: ChatParams, hit: CachedAnswer, cid: str,
        created: int,
    ) -> Response:
        usage = dict(hit.usage)
        # The whole prompt was served from the gateway's cache.
        usage["prompt_cache_hit_tokens"] = usage["prompt_tokens"]
        usage["prompt_cache_miss_tokens"] = 0
        usage["prompt_tokens_details"] = {"cached_tokens": usage["prompt_tokens"]}
        ctx.prompt_tokens, ctx.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        self.note_text(ctx, params, None, hit)
        ctx.release()
        self.finish(ctx)
        if not params.stream:
            payload = R.completion(cid, created, params.model, hit.reasoning, hit.content,
                                   hit.finish_reason, usage)
            return JSONResponse(payload, headers=ctx.headers())

        def frames() -> list[bytes]:
            iu = params.include_usage
            out = [R.sse(R.chunk(cid, created, params.model, {"role": "assistant", "content": ""},
                                 with_usage_field=iu))]
            if hit.reasoning:
                out.append(R.sse(R.chunk(cid, created, params.model,
                                         R.delta(hit.reasoning, ""), with_usage_field=iu)))
            if hit.content:
                out.append(R.sse(R.chunk(cid, created, params.model, R.delta("", hit.content),
                                         with_usage_field=iu)))
            out.append(R.sse(R.chunk(cid, created, params.model, {}, hit.finish_reason,
                                     with_usage_field=iu)))
            if iu:
                out.append(R.sse(R.usage_chunk(cid, created, params.model, usage)))
            out.append(R.DONE)
            return out

        async def body() -> AsyncIterator[bytes]:
            for f in frames():
                yield f

        headers = ctx.headers()
        headers["Cache-Control"] = "no-cache"
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    async def stream_body(
        self, ctx: Ctx, key: KeyState, params: ChatParams, gen: Generation, pump: Pump,
        first: Any, deadline: float, cid: str, created: int, ck: str | None,
    ) -> AsyncIterator[bytes]:
        gw = self.gw
        model, iu = params.model, params.include_usage
        role_sent = False
        ended = False
        item = first
        try:
            while True:
                if item is TIMEOUT:
                    if time.monotonic() >= deadline:
                        raise DeadlineExceeded("request deadline exceeded")
                    yield R.KEEPALIVE
                elif item is END:
                    break
                else:
                    r, c = gen.on_event(item)
                    # Deltas that piled up while the last chunk was written go out as one chunk: under
                    # load the chunks per second stay what this process can write, never a backlog.
                    broken: Exception | None = None
                    while not gen.stopped:
                        try:
                            more = pump.ready()
                        except Exception as e:  # raised once what came before it is sent
                            broken = e
                            break
                        if more is None or more is END:
                            if more is END:
                                ended = True
                            break
                        r2, c2 = gen.on_event(more)
                        r, c = r + r2, c + c2
                    if not role_sent and (r or c):
                        role_sent = True
                        yield R.sse(R.chunk(cid, created, model,
                                            {"role": "assistant", "content": ""},
                                            with_usage_field=iu))
                    for d in _deltas(r, c):
                        yield R.sse(R.chunk(cid, created, model, d, with_usage_field=iu))
                    if broken is not None:
                        raise broken
                    if gen.stopped or ended:
                        break
                wait = gw.cfg.keepalive_s if not role_sent else None
                remaining = max(0.0, deadline - time.monotonic())
                item = await pump.next(remaining if wait is None else min(wait, remaining))
                if item is TIMEOUT and role_sent:
                    raise DeadlineExceeded("request deadline exceeded")
            r, c = gen.close()
            for d in _deltas(r, c):
                yield R.sse(R.chunk(cid, created, model, d, with_usage_field=iu))
            usage = gen.usage_dict()
            ctx.prompt_tokens = usage["prompt_tokens"]
            ctx.completion_tokens = usage["completion_tokens"]
            yield R.sse(R.chunk(cid, created, model, {}, gen.finish_reason(),
                                with_usage_field=iu))
            if iu:
                yield R.sse(R.usage_chunk(cid, created, model, usage))
            yield R.DONE
            self.remember(ck, gen, usage, ctx)
        except Exception as e:
            err = _error_type(e) if not isinstance(e, StreamBroken) else APIError(
                502, f"the backend failed mid-stream: {e}", type_="api_error",
                code="stream_broken")
            ctx.error = err.code
            ctx.completion_tokens = gen.completion_tokens()
            yield R.sse(err.body())
        finally:
            await pump.close()
            ctx.release()
            self.note_text(ctx, params, gen)
            self.finish(ctx)

    # --- other endpoints ----------------------------------------------------------
    async def models(self, request: Request) -> Response:
        rid = uuid.uuid4().hex
        try:
            key = self.authenticate(request)
        except APIError as e:
            return e.response({"X-Request-Id": rid})
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "gpuprov"}
            for m in self.gw.public_models() if key.allows_model(m)
        ]
        return JSONResponse({"object": "list", "data": data}, headers={"X-Request-Id": rid})

    def admin(self, request: Request) -> KeyState:
        key = self.authenticate(request)
        if key.config.role != "admin":
            raise APIError(403, "This endpoint needs an admin key.", type_="permission_error",
                           code="admin_only")
        return key

    async def admin_keys(self, request: Request) -> Response:
        try:
            self.admin(request)
        except APIError as e:
            return e.response()
        data = [
            {
                "id": s.config.id, "owner": s.config.owner, "role": s.config.role,
                "models": list(s.config.models), "capacity": s.config.rate.capacity,
                "refill_per_s": s.config.rate.refill_per_s,
                "max_concurrent": s.config.max_concurrent, "may_fallback": s.config.may_fallback,
                "active": s.slots.active,
            }
            for s in self.gw.keys.all()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def admin_audit(self, request: Request) -> Response:
        try:
            self.admin(request)
        except APIError as e:
            return e.response()
        if self.gw.audit is None:
            return APIError(404, "audit log is not enabled", code="not_enabled").response()
        try:
            limit = max(1, min(1000, int(request.query_params.get("limit", "100"))))
        except ValueError:
            return bad_request("limit must be an integer", "limit").response()
        return JSONResponse({"object": "list", "data": self.gw.audit.tail(limit)})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if await self.gw.router.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "no backend can serve"}, status_code=503)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return APIError(500, "internal error", type_="server_error", code="internal_error").response()


def _deltas(reasoning: str, content: str) -> list[dict[str, Any]]:
    """A chunk carries reasoning or content, never both: DeepSeek's own streaming example reads a
    chunk's content only when it has no reasoning_content, so the answer's first words would be lost
    where the end of the reasoning and the start of the answer shared a chunk."""
    return [R.delta(r, c) for r, c in ((reasoning, ""), ("", content)) if r or c]


def build_app(gw: Gateway) -> Starlette:
    api = Api(gw)
    routes = [
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/models", api.models, methods=["GET"]),
        Route("/v1/admin/keys", api.admin_keys, methods=["GET"]),
        Route("/v1/admin/audit", api.admin_audit, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        max_body_size=8 * 1024 * 1024,
    )
