"""Plain in-process metrics: counters, gauges and fixed-bucket histograms. The Triton adapter turns a
`snapshot()` into pb_utils.MetricFamily values; tests and benchmarks read it directly."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

# Seconds; Prometheus-style upper bounds (the last bucket is +Inf).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def snapshot(self) -> dict:
        cumulative, acc = [], 0
        for c in self.counts:
            acc += c
            cumulative.append(acc)
        return {"bounds": self.bounds, "cumulative": cumulative, "sum": self.sum, "count": self.count}


class EngineMetrics:
    """Updated by the engine thread (and submit() for refusals); read with snapshot() from anywhere."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.requests = 0
        self.completed = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.failures: Counter[str] = Counter()
        self.finish_reasons: Counter[str] = Counter()
        self.running = 0
        self.waiting = 0
        self.kv_used_tokens = 0
        self.kv_capacity_tokens = 0
        self.slots_used = 0
        self.slots_total = 0
        self.steps = 0

    def fail(self, reason: str) -> None:
        with self.lock:
            self.failures[reason] += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "requests": self.requests,
                "completed": self.completed,
                "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens,
                "failures": dict(self.failures),
                "finish_reasons": dict(self.finish_reasons),
                "running": self.running,
                "waiting": self.waiting,
                "kv_used_tokens": self.kv_used_tokens,
                "kv_capacity_tokens": self.kv_capacity_tokens,
                "kv_usage": self.kv_used_tokens / self.kv_capacity_tokens if self.kv_capacity_tokens else 0.0,
                "slots_used": self.slots_used,
                "slots_total": self.slots_total,
                "steps": self.steps,
                "ttft_seconds": self.ttft.snapshot(),
                "inter_token_seconds": self.itl.snapshot(),
            }
