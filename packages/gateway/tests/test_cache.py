"""Exact-match cache of deterministic requests, per key."""

from __future__ import annotations

import json
import uuid

BODY = {"model": "deepseek", "temperature": 0}


def _body(**kw) -> dict:
    # A unique message per test run keeps the cache state of other tests out of the way.
    msg = [{"role": "user", "content": f"hello {kw.pop('tag')}"}]
    return {**BODY, "messages": msg, **kw}


def test_hit_for_repeated_request_miss_for_other_key(gateway, triton):
    tag = uuid.uuid4().hex
    with gateway.client("user") as c:
        n0 = triton.stats()["requests"]
        r1 = c.post("/v1/chat/completions", json=_body(tag=tag))
        r2 = c.post("/v1/chat/completions", json=_body(tag=tag))
        assert (r1.headers["X-Cache"], r2.headers["X-Cache"]) == ("miss", "hit")
        assert triton.stats()["requests"] == n0 + 1
        a, b = r1.json(), r2.json()
        assert a["choices"] == b["choices"]
        assert b["usage"]["prompt_cache_hit_tokens"] == b["usage"]["prompt_tokens"]
        assert a["id"] != b["id"] and r1.headers["X-Request-Id"] != r2.headers["X-Request-Id"]
        r3 = c.post("/v1/chat/completions", json=_body(tag=tag),
                    headers={"Cache-Control": "no-cache"})
        assert r3.headers["X-Cache"] == "bypass"
        assert triton.stats()["requests"] == n0 + 2
    with gateway.client("other") as c:
        r4 = c.post("/v1/chat/completions", json=_body(tag=tag))
        assert r4.headers["X-Cache"] == "miss"
        assert triton.stats()["requests"] == n0 + 3


def test_streaming_hit_and_nondeterministic_bypass(gateway, triton):
    tag = uuid.uuid4().hex
    with gateway.client("user") as c:
        r1 = c.post("/v1/chat/completions", json=_body(tag=tag, stream=True,
                                                       stream_options={"include_usage": True}))
        n0 = triton.stats()["requests"]
        r2 = c.post("/v1/chat/completions", json=_body(tag=tag, stream=True,
                                                       stream_options={"include_usage": True}))
        assert (r1.headers["X-Cache"], r2.headers["X-Cache"]) == ("miss", "hit")
        assert triton.stats()["requests"] == n0

        def content(r) -> str:
            out = ""
            for line in r.text.splitlines():
                if line.startswith("data: {"):
                    ch = json.loads(line[6:])["choices"]
                    out += ch[0]["delta"].get("content") or "" if ch else ""
            return out

        assert content(r1) == content(r2) == "The answer is 42."
        assert r2.text.rstrip().endswith("data: [DONE]")
        r3 = c.post("/v1/chat/completions", json=_body(tag=tag, temperature=0.7))
        assert r3.headers["X-Cache"] == "bypass"
