"""Prometheus metrics, in a registry of their own, served on the metrics listener only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests_total", "Chat requests answered",
            ["key_id", "model", "status", "backend"], registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "Time to the first token",
            ["model", "backend"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Whole request duration",
            ["model", "backend"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self.tokens = Counter(
            "gateway_tokens_total", "Tokens", ["key_id", "model", "kind"], registry=r
        )
        self.fallbacks = Counter(
            "gateway_fallbacks_total", "Requests served by the cloud or another host",
            ["reason", "backend"], registry=r,
        )
        self.breaker = Gauge(
            "gateway_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["backend"], registry=r,
        )
        self.backend_failures = Counter(
            "gateway_backend_failures_total", "Backend attempts that failed", ["backend"], registry=r
        )
        self.outstanding = Gauge(
            "gateway_backend_outstanding", "Requests in flight per backend", ["backend"], registry=r
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_total", "Requests answered 429", ["key_id", "reason"], registry=r
        )
        self.cache = Counter(
            "gateway_cache_total", "Response cache results", ["result"], registry=r
        )
        self.reloads = Counter(
            "gateway_config_reloads_total", "Config reloads", ["result"], registry=r
        )

