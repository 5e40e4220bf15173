"""Routing: ordered backends, circuit breakers, retries with back-off, cloud fallback."""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import certifi
import httpx

from gpuprov_gateway.backends import Backend, CloudBackend, TritonBackend
from gpuprov_gateway.breaker import STATE_VALUE, CircuitBreaker
from gpuprov_gateway.config import Config
from gpuprov_gateway.events import BackendError, Delta, Event, GenRequest
from gpuprov_gateway.metrics import Metrics


class NoBackend(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StreamBroken(Exception):
    """The backend failed after output had been passed on; it is not retried."""


class DeadlineExceeded(Exception):
    pass


@dataclass
class RouteInfo:
    backend: str | None = None
    fallback_reason: str | None = None
    attempts: int = 0
    first_token_at: float | None = None


class Router:
    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self.metrics = metrics
        self.attempts = cfg.retry_attempts
        self.backoff_s = cfg.retry_backoff_s
        self.queue_threshold = cfg.queue_threshold
        self.fallback_enabled = cfg.fallback_enabled

        def br() -> CircuitBreaker:
            return CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s)

        self._aio: aiohttp.ClientSession | None = None
        # connect: waiting for a free pooled connection plus connecting (httpx's pool timeout was the
        # read timeout); sock_connect: the TCP connect alone; sock_read: between two reads.
        self._aio_timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.read_timeout_s, sock_connect=cfg.connect_timeout_s,
            sock_read=cfg.read_timeout_s)
        self._closed = False
        self.local: TritonBackend | None = (
            TritonBackend(cfg.local, br(), "local", self.aio) if cfg.local else None
        )
        self.hosts = [TritonBackend(h, br(), "host", self.aio) for h in cfg.hosts]
        self.cloud = [CloudBackend(c, br()) for c in cfg.cloud]
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            trust_env=False,
        )
        for b in self.all():
            metrics.breaker.labels(b.name).set(0)
            metrics.outstanding.labels(b.name).set(0)

    def aio(self) -> aiohttp.ClientSession:
        """The session for Triton's streams, made on first use (it needs the running loop); TLS
        trusts the same CAs as httpx (certifi), and no proxy from the environment."""
        if self._closed:
            raise BackendError("the gateway is shutting down", retryable=False)
        if self._aio is None or self._aio.closed:
            ssl_ctx = ssl.create_default_context(cafile=certifi.where())
            self._aio = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, ssl=ssl_ctx),
                timeout=self._aio_timeout, trust_env=False, read_bufsize=2**20)
        return self._aio

    def all(self) -> list[Backend]:
        return ([self.local] if self.local else []) + list(self.hosts) + list(self.cloud)

    def plan(self, may_fallback: bool) -> tuple[list[Backend], str | None]:
        local: list[Backend] = [self.local] if self.local else []
        hosts: list[Backend] = sorted(self.hosts, key=lambda b: b.outstanding)
        cloud: list[Backend] = list(self.cloud) if (self.fallback_enabled and may_fallback) else []
        if cloud and self.local and self.local.outstanding >= self.queue_threshold:
            return cloud + local + hosts, "queue"
        return local + hosts + cloud, None

    def _breaker_metric(self, b: Backend) -> None:
        self.metrics.breaker.labels(b.name).set(STATE_VALUE[b.breaker.state])

    def _retry_after(self, order: list[Backend]) -> int:
        waits = [b.breaker.retry_in() for b in order if b.breaker.state == "open"]
        return max(1, math.ceil(min(waits))) if waits else 1

    async def stream(
        self, req: GenRequest, may_fallback: bool, deadline: float, buffered: bool,
        info: RouteInfo,
    ) -> AsyncIterator[Event]:
        """Yield events from the first backend that serves.

        buffered=False (streaming to the client): once a Delta was yielded, a failure
        raises StreamBroken. buffered=True: an attempt's events are held until it
        completes, so a failure mid-way can still be retried.
        """
        order, spill = self.plan(may_fallback)
        reason: str | None = spill
        last: str = "no backend configured"
        for b in order:
            if b.tier != "local" and reason is None:
                reason = "local_unavailable"
            for attempt in range(self.attempts):
                if not b.breaker.allow():
                    reason = reason or "breaker_open"
                    last = f"{b.name}: circuit open"
                    self._breaker_metric(b)
                    break
                self._breaker_metric(b)
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded("request deadline exceeded")
                info.attempts += 1
                b.outstanding += 1
                self.metrics.outstanding.labels(b.name).set(b.outstanding)
                gen = b.generate(self.client, req)
                started = False
                held: list[Event] = []
                try:
                    try:
                        async for ev in gen:
                            if not started and isinstance(ev, Delta):
                                started = True
                                info.first_token_at = time.monotonic()
                                b.breaker.success()
                                self._breaker_metric(b)
                                info.backend = b.name
                                info.fallback_reason = reason if b is not order[0] or spill else None
                            if buffered:
                                held.append(ev)
                            else:
                                yield ev
                    except BackendError as e:
                        b.breaker.failure()
                        self._breaker_metric(b)
                        self.metrics.backend_failures.labels(b.name).inc()
                        if started and not buffered:
                            raise StreamBroken(str(e)) from e
                        last = str(e)
                        reason = reason or "local_failed"
                        if not e.retryable:
                            break
                        if attempt + 1 < self.attempts and b.breaker.state != "open":
                            pause = e.retry_after or self.backoff_s * (2**attempt)
                            pause = min(pause, max(0.0, deadline - time.monotonic()))
                            await asyncio.sleep(pause)
                        continue
                finally:
                    b.outstanding -= 1
                    self.metrics.outstanding.labels(b.name).set(b.outstanding)
                    await gen.aclose()
                b.breaker.success()
                self._breaker_metric(b)
                info.backend = b.name
                info.fallback_reason = reason if (b is not order[0] or spill) else None
                if info.fallback_reason:
                    self.metrics.fallbacks.labels(info.fallback_reason, b.name).inc()
                for ev in held:
                    yield ev
                return
        raise NoBackend(f"no backend can serve the request ({last})", self._retry_after(order))

    async def ready(self) -> bool:
        for b in self.all():
            if isinstance(b, TritonBackend):
                if await b.ready(self.client):
                    return True
            elif self.fallback_enabled and b.breaker.state != "open":
                return True
        return False

    async def close(self) -> None:
        self._closed = True
        await self.client.aclose()
        if self._aio is not None:
            await self._aio.close()
