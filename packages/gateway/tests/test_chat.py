"""Chat completions through the gateway with the openai SDK and raw HTTP."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from conftest import KEYS

MSG = [{"role": "user", "content": "hello"}]


def sdk(gw, key: str = "user") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=KEYS[key], max_retries=0, timeout=10)


def test_completion_with_reasoning(gateway):
    r = sdk(gateway).chat.completions.create(model="deepseek-reasoner", messages=MSG)
    msg = r.choices[0].message
    assert msg.content == "The answer is 42."
    assert msg.model_extra["reasoning_content"] == "Let me think about it."
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    extra = u.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens
    assert u.completion_tokens_details.reasoning_tokens > 0
    assert r.model == "deepseek-reasoner"


def test_prompt_sent_to_triton(gateway, triton):
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi", "reasoning_content": "SECRET-REASONING"},
        {"role": "user", "content": "say word"},
    ]
    sdk(gateway).chat.completions.create(model="deepseek", messages=history, seed=7, user="u1",
                                         temperature=0.5, top_p=0.9, max_tokens=20)
    body = triton.stats()["last_body"]
    assert body["text_input"] == (
        "<｜begin▁of▁sentence｜>be brief<｜User｜>hello<｜Assistant｜>hi<｜end▁of▁sentence｜>"
        "<｜User｜>say word<｜Assistant｜><think>\n"
    )
    assert "SECRET-REASONING" not in body["text_input"]
    assert body["stream"] is True and body["apply_chat_template"] is False
    assert body["max_tokens"] == 20 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["random_seed"] == 7


def test_streaming_include_usage(gateway):
    stream = sdk(gateway).chat.completions.create(
        model="deepseek-chat", messages=MSG, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert content == "The answer is 42."
    assert reasoning == "Let me think about it."
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done_and_no_usage_without_option(gateway):
    with gateway.client() as c, c.stream("POST", "/v1/chat/completions", json={
            "model": "deepseek", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    objs = [json.loads(x[6:]) for x in lines[:-1] if x.startswith("data: ")]
    assert all("usage" not in o for o in objs)


def test_keepalive_while_waiting_for_first_token(gateway):
    with gateway.client() as c, c.stream("POST", "/v1/chat/completions", json={
            "model": "deepseek", "stream": True,
            "messages": [{"role": "user", "content": "[[slow]] hello"}]}) as r:
        lines = [x for x in r.iter_lines() if x]
    first_data = next(i for i, x in enumerate(lines) if x.startswith("data:"))
    assert lines[:first_data].count(": keep-alive") >= 2
    assert lines[-1] == "data: [DONE]"


def test_stop_string(gateway):
    r = sdk(gateway).chat.completions.create(model="deepseek", messages=MSG, stop=[" is"])
    assert r.choices[0].message.content == "The answer"
    assert r.choices[0].finish_reason == "stop"


def test_stop_string_streaming(gateway):
    stream = sdk(gateway).chat.completions.create(
        model="deepseek", messages=MSG, stop="42", stream=True)
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "The answer is "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_length(gateway):
    r = sdk(gateway).chat.completions.create(model="deepseek", messages=MSG, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    assert r.choices[0].message.content == ""
    stream = sdk(gateway).chat.completions.create(model="deepseek", messages=MSG, max_tokens=12,
                                                  stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The answer"


def test_models_and_alias(gateway):
    ids = [m.id for m in sdk(gateway).models.list()]
    assert ids == ["deepseek", "deepseek-chat", "deepseek-reasoner"]
    assert [m.id for m in sdk(gateway, "limited").models.list()] == ["deepseek-chat"]
    r = sdk(gateway, "limited").chat.completions.create(model="deepseek-chat", messages=MSG)
    assert r.model == "deepseek-chat" and r.choices[0].message.content == "The answer is 42."


def test_unknown_model_404(gateway):
    with pytest.raises(openai.NotFoundError) as e:
        sdk(gateway).chat.completions.create(model="gpt-4", messages=MSG)
    assert e.value.body["code"] == "model_not_found"


def test_broken_stream_not_retried(gateway, triton):
    before = triton.stats()["requests"]
    stream = sdk(gateway).chat.completions.create(
        model="deepseek", stream=True, messages=[{"role": "user", "content": "[[break]]"}])
    got = []
    with pytest.raises(openai.APIError):
        for c in stream:
            got.append(c)
    assert triton.stats()["requests"] == before + 1  # no retry once output went out
    # Raw view: the stream had started (200, SSE) and ends with an error event, no [DONE].
    with gateway.client() as c, c.stream("POST", "/v1/chat/completions", json={
            "model": "deepseek", "stream": True,
            "messages": [{"role": "user", "content": "[[break]]"}]}) as r:
        assert r.status_code == 200
        lines = [x for x in r.iter_lines() if x.startswith("data:")]
    assert json.loads(lines[-1][6:])["error"]["code"] == "stream_broken"
    assert triton.stats()["requests"] == before + 2


def test_backend_error_before_output_is_retried_then_503(gateway, triton):
    # An in-stream error before any output is retried (attempts: 2); then the breaker is
    # open and this key may not fall back: 503 with Retry-After. After the cool-down a
    # half-open probe closes the breaker again.
    with gateway.client() as c:
        assert c.post("/v1/chat/completions", json={"model": "deepseek", "messages": MSG}
                      ).status_code == 200  # breaker closed, no failures counted
        before = triton.stats()["requests"]
        r = c.post("/v1/chat/completions", json={
            "model": "deepseek", "messages": [{"role": "user", "content": "[[error]]"}]})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "no_backend"
        assert int(r.headers["Retry-After"]) >= 1
        assert triton.stats()["requests"] == before + 2
        m = httpx.get(f"{gateway.metrics_url}/metrics").text
        assert 'gateway_breaker_state{backend="local"} 2.0' in m
        time.sleep(0.6)
        r = c.post("/v1/chat/completions", json={"model": "deepseek", "messages": MSG})
        assert r.status_code == 200
    m = httpx.get(f"{gateway.metrics_url}/metrics").text
    assert 'gateway_breaker_state{backend="local"} 0.0' in m


def test_healthz_readyz_and_metrics_port(gateway):
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    assert httpx.get(f"{gateway.url}/metrics").status_code == 404
    m = httpx.get(f"{gateway.metrics_url}/metrics").text
    assert "gateway_requests_total" in m
    assert "gateway_time_to_first_token_seconds_bucket" in m
    assert 'gateway_breaker_state{backend="local"}' in m


def test_a_long_fast_stream_arrives_whole_and_in_order(gateway):
    """64 pieces written back to back (the gateway's max_tokens limit here): whatever the writer
    merges into one chunk, the client's text is every piece once, in order."""
    stream = sdk(gateway).chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "[[long]] go"}], stream=True,
        max_tokens=64, temperature=0.7)
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks)
    # No chunk carries both (DeepSeek's streaming example reads content only without reasoning).
    assert not [c for c in chunks if c.choices[0].delta.content
                and (c.choices[0].delta.model_extra or {}).get("reasoning_content")]
    # the rendered prompt opens <think>: 10 pieces of reasoning and its end, 5 of the answer, 49 fillers
    assert content == "The answer is 42." + "".join(f" w{i}" for i in range(64 - 10 - 5))
    assert reasoning == "Let me think about it."
    assert chunks[-1].choices[0].finish_reason == "length"


def test_an_idle_keep_alive_connection_outlives_the_clients_expiry(gateway):
    """httpx (and so the openai SDK) reuses an idle connection for 5 s: the gateway must not close it
    sooner, or a request sent as it closes fails with a read error (seen once at 64 streams)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.getheader("connection") != "close"
        first.read()
        time.sleep(httpx.Limits().keepalive_expiry + 1.0)
        conn.request("GET", "/healthz")  # on the same connection: http.client does not reconnect
        assert conn.getresponse().status == 200  # RemoteDisconnected when the server closed it
    finally:
        conn.close()
