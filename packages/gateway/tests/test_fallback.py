"""Fallback to the cloud stand-in when the local backend is down."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
from conftest import KEYS

MSG = [{"role": "user", "content": "hello"}]


def test_breaker_opens_after_two_failures_then_cloud_serves(down_gateway, cloud):
    before = cloud.stats()["requests"]
    with down_gateway.client("fallback") as c:
        r = c.post("/v1/chat/completions", json={"model": "deepseek-chat", "messages": MSG})
        assert r.status_code == 200, r.text
        assert r.headers["X-Backend"] == "cloud"
        assert r.json()["choices"][0]["message"]["content"] == "Cloud answer."
        usage = r.json()["usage"]
        assert usage["prompt_cache_hit_tokens"] == 3 and usage["prompt_tokens"] == 7
        m = httpx.get(f"{down_gateway.metrics_url}/metrics").text
        assert 'gateway_breaker_state{backend="local"} 2.0' in m
        assert 'gateway_backend_failures_total{backend="local"} 2.0' in m
        # The breaker is open: the next request goes straight to the cloud.
        r = c.post("/v1/chat/completions", json={"model": "deepseek-chat", "messages": MSG,
                                                 "stream": True})
        assert r.status_code == 200 and r.headers["X-Backend"] == "cloud"
        assert "data: [DONE]" in r.text
    assert cloud.stats()["requests"] == before + 2
    body = cloud.stats()["last_body"]
    assert body["model"] == "deepseek-chat" and body["stream"] is True
    m = httpx.get(f"{down_gateway.metrics_url}/metrics").text
    assert 'gateway_backend_failures_total{backend="local"} 2.0' in m
    lines = down_gateway.audit_lines()
    assert [x["fallback_reason"] for x in lines[-2:]] == ["local_failed", "breaker_open"]
    assert all(x["backend"] == "cloud" for x in lines[-2:])


def test_fallback_not_allowed_503(down_gateway):
    client = openai.OpenAI(base_url=f"{down_gateway.url}/v1", api_key=KEYS["user"],
                           max_retries=0, timeout=10)
    try:
        client.chat.completions.create(model="deepseek", messages=MSG)
        raise AssertionError("expected 503")
    except openai.APIStatusError as e:
        assert e.status_code == 503
        assert int(e.response.headers["Retry-After"]) >= 1
        assert e.body["code"] == "no_backend"
    r = down_gateway.client("user").post(
        "/v1/chat/completions", json={"model": "deepseek", "messages": MSG, "stream": True})
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert httpx.get(f"{down_gateway.url}/readyz").status_code == 200  # the cloud can serve


def _post(gw, key: str, body: dict) -> httpx.Response:
    with gw.client(key) as c:
        return c.post("/v1/chat/completions", json=body)


def test_queue_over_threshold_spills_fallback_keys_to_cloud(spill_gateway, triton):
    body = {"model": "deepseek", "messages": MSG}
    with spill_gateway.client("user") as busy, busy.stream("POST", "/chat/completions", json={
            "model": "deepseek", "stream": True,
            "messages": [{"role": "user", "content": "[[hold]] hello"}]}) as r:
        lines = r.iter_lines()
        assert next(x for x in lines if x.startswith("data:"))  # one request outstanding (held)
        # A key that may fall back is sent to the cloud at once; one that may not waits for the
        # local backend (so it is sent beside, and the held request released after the spill).
        with ThreadPoolExecutor(1) as pool:
            try:
                with spill_gateway.client("spill") as c:
                    s = c.post("/v1/chat/completions", json=body)
                waiting = pool.submit(_post, spill_gateway, "user", body)
            finally:
                httpx.post(f"{triton.url}/admin/release")
            u = waiting.result(timeout=60)
        assert [x for x in lines if x][-1] == "data: [DONE]"
    assert s.status_code == 200 and s.headers["X-Backend"] == "cloud"
    assert u.status_code == 200 and u.headers["X-Backend"] == "local"
    reasons = {x["request_id"]: x["fallback_reason"] for x in spill_gateway.audit_lines()}
    assert reasons[s.headers["X-Request-Id"]] == "queue"
    assert reasons[u.headers["X-Request-Id"]] is None
