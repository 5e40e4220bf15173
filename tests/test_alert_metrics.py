"""Every metric the alert rules use exists under that exact name in what the exporters really
expose: Triton 2.51's and nvitop-exporter 1.7.2's /metrics as recorded on the device machine's H200
(tests/fixtures/metrics/). The first GPU run showed nvitop-exporter names its gauges with a unit
suffix (gpu_utilization_Percentage), which the rules had missed; this test keeps that from coming
back. The model's own latency histograms (gpuprov_*) are Triton custom metrics that
roles/triton/files/model.py registers: each name the rules use must be one it declares; likewise the
API gateway's (gateway_*), which packages/gateway's metrics module declares; the native engine's
(gpuprov_engine_*), which its Triton model (packages/engine/triton/model.py) declares."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = (ROOT / "roles/prometheus/templates/gpuprov.rules.yml.j2").read_text()
FIXTURES = ROOT / "tests/fixtures/metrics"
MODEL = (ROOT / "roles/triton/files/model.py").read_text()
ENGINE = (ROOT / "packages/engine/triton/model.py").read_text()
GATEWAY = (ROOT / "packages/gateway/src/gpuprov_gateway/metrics.py").read_text()
DRIFT = (ROOT / "gpuprov/drift.py").read_text()

# Not recordable here: DCGM's exporter needs NGC. Names from dcgm-exporter's default counters.
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
# Not recordable here either: the TensorRT-LLM backend needs NGC's image. The family Triton's metrics
# documentation gives for it (labels kv_cache_block_type max, free, used, tokens_per, reused).
TRTLLM = {"nv_trt_llm_kv_cache_block_metrics"}
# Prometheus's own and the blackbox exporter's (the lab tests fire TritonNotReady on them), and the
# node exporter's meminfo gauges (names stable across node exporter 1.x; the node_exporter scenario
# checks they are served).
OTHERS = {"up", "probe_success", "probe_ssl_earliest_cert_expiry", "node_memory_MemAvailable_bytes",
          "node_memory_MemTotal_bytes"}


def _exposed(name: str) -> set[str]:
    return {ln.split("{")[0].split()[0] for ln in (FIXTURES / name).read_text().splitlines()
            if ln and not ln.startswith("#")}


def _used() -> set[str]:
    """Metric names in the rules' expressions (Jinja variables, label matchers, functions removed)."""
    exprs = []
    for folded, single in re.findall(r"expr: >-\n((?:[ ]{10}.*\n)+)|expr: (.*)\n", RULES):
        exprs.append(folded or single)
    text = re.sub(r"\{\{.*?\}\}", " ", " ".join(exprs))  # thresholds
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\([^()]*\)\s*\(", "(", text)  # by (labels) (
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    return words - {"sum", "max", "by", "rate", "time", "vector", "or", "and", "unless", "on", "e6", "m",
                     "histogram_quantile", "le"}


def _model_metrics() -> set[str]:
    """The series names the model's histograms expose: <name>_bucket, _sum, _count."""
    names = re.findall(r'Histogram\(_counter_family, "(gpuprov_[a-z_]+)"', MODEL)
    return {f"{n}_{suffix}" for n in names for suffix in ("bucket", "sum", "count")}


def _engine_metrics() -> set[str]:
    """The series names of the native engine's counters, gauges and histograms."""
    names = set()
    for kind, name in re.findall(r'(_counter|_gauge|_Histogram)\(\s*"(gpuprov_[a-z_]+)"', ENGINE):
        names |= {f"{name}_{s}" for s in ("bucket", "sum", "count")} if kind == "_Histogram" else {name}
    return names


def _gateway_metrics() -> set[str]:
    """The series names of the gateway's Counters and Gauges, and its Histograms' series."""
    names = set()
    for kind, name in re.findall(r'(Counter|Gauge|Histogram)\(\s*"(gateway_[a-z_]+)"', GATEWAY):
        names |= {f"{name}_{s}" for s in ("bucket", "sum", "count")} if kind == "Histogram" else {name}
    return names


def _drift_metrics() -> set[str]:
    """The gauges `gpuprov drift --metrics-file` writes (gpuprov/drift.py)."""
    return set(re.findall(r'Gauge\(\s*"(gpuprov_drift_[a-z_]+)"', DRIFT))


def test_the_rules_use_metrics():
    used = _used()
    assert {"gpuprov_time_to_first_token_seconds_bucket", "gpu_utilization_Percentage", "up"} <= used, used
    # Whole-request durations are not a latency alert's input (they grow with the answer's length).
    assert "nv_inference_request_duration_us" not in used
    # The seed's success rate as applications see it, and the gateway's circuit breakers.
    assert {"gateway_requests_total", "gateway_breaker_state"} <= used
    # The fleet's drift, as gpuprov drift --metrics-file writes it.
    assert {"gpuprov_drift_tasks", "gpuprov_drift_last_run_timestamp_seconds"} <= used


def test_the_engine_declares_its_gauges():
    assert {"gpuprov_engine_kv_cache_usage_ratio", "gpuprov_engine_generated_tokens_total",
            "gpuprov_engine_inter_token_seconds_bucket"} <= _engine_metrics()
    assert "gpuprov_engine_kv_cache_usage_ratio" in _used()


def test_the_model_declares_its_latency_histograms():
    assert {"gpuprov_time_to_first_token_seconds_bucket",
            "gpuprov_time_per_output_token_seconds_sum"} <= _model_metrics()


def test_every_metric_in_the_rules_is_exposed_under_that_name():
    triton = _exposed("triton-2.51-h200.prom")
    nvitop = _exposed("nvitop-exporter-1.7.2-h200.prom")
    for name in sorted(_used()):
        if name.startswith("nv_trt_llm_"):
            assert name in TRTLLM, f"{name}: not a TensorRT-LLM backend family we know of"
        elif name.startswith("nv_"):
            assert name in triton, f"{name}: Triton 2.51 does not expose it"
        elif name.startswith("gpuprov_drift_"):
            assert name in _drift_metrics(), f"{name}: gpuprov drift does not write it"
        elif name.startswith("gpuprov_engine_"):
            assert name in _engine_metrics(), f"{name}: the native engine's model does not declare it"
        elif name.startswith("gpuprov_"):
            assert name in _model_metrics(), f"{name}: the model does not declare it"
        elif name.startswith("gateway_"):
            assert name in _gateway_metrics(), f"{name}: the gateway does not declare it"
        elif name.startswith("gpu_"):
            assert name in nvitop, f"{name}: nvitop-exporter 1.7.2 does not expose it"
        else:
            assert name in DCGM | OTHERS, f"{name}: unknown metric"


def test_the_grafana_dashboard_uses_exposed_metrics():
    import json

    dashboard = json.loads((ROOT / "roles/prometheus/files/grafana/gpuprov-inference.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) == len(dashboard["panels"]) >= 8
    text = re.sub(r"\{[^}]*\}", " ", " ".join(exprs))
    text = re.sub(r"\([^()]*\)\s*\(", "(", text)
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)) - {"sum", "by", "rate", "time", "or", "e6", "m",
                                                                 "histogram_quantile", "le"}
    known = (_exposed("triton-2.51-h200.prom") | _exposed("nvitop-exporter-1.7.2-h200.prom") | _model_metrics()
             | DCGM | OTHERS)
    assert names <= known, names - known
