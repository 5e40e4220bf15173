"""Bad input: each a 400 in OpenAI's shape, and the gateway keeps serving."""

from __future__ import annotations

import pytest

OK = {"model": "deepseek", "messages": [{"role": "user", "content": "hello"}]}
CASES = {
    "invalid_json": b'{"model": "deepseek", "messages": [',
    "not_an_object": b"[1, 2]",
    "no_messages": {"model": "deepseek"},
    "messages_wrong_type": {"model": "deepseek", "messages": "hello"},
    "empty_messages": {"model": "deepseek", "messages": []},
    "unknown_role": {"model": "deepseek", "messages": [{"role": "wizard", "content": "x"}]},
    "content_wrong_type": {"model": "deepseek", "messages": [{"role": "user", "content": 5}]},
    "temperature_wrong_type": {**OK, "temperature": "hot"},
    "max_tokens_wrong_type": {**OK, "max_tokens": "many"},
    "max_tokens_over_limit": {**OK, "max_tokens": 65},
    "prompt_longer_than_context": {"model": "deepseek",
                                   "messages": [{"role": "user", "content": "word " * 300}]},
    "n_2": {**OK, "n": 2},
    "tools": {**OK, "tools": [{"type": "function", "function": {"name": "f"}}]},
    "logprobs": {**OK, "logprobs": True},
    "unknown_field": {**OK, "best_of": 3},
    "stop_wrong_type": {**OK, "stop": 5},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_400(gateway, name):
    case = CASES[name]
    with gateway.client() as c:
        if isinstance(case, bytes):
            r = c.post("/v1/chat/completions", content=case,
                       headers={"Content-Type": "application/json"})
        else:
            r = c.post("/v1/chat/completions", json=case)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["message"]
        ok = c.post("/v1/chat/completions", json=OK)
        assert ok.status_code == 200


def test_context_error_names_the_limit(gateway):
    with gateway.client() as c:
        r = c.post("/v1/chat/completions", json=CASES["prompt_longer_than_context"])
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "256" in r.json()["error"]["message"]


def test_unknown_route_and_method_in_openai_shape(gateway):
    with gateway.client() as c:
        r = c.get("/v1/nothing")
        assert r.status_code == 404 and "error" in r.json()
        r = c.get("/v1/chat/completions")
        assert r.status_code == 405 and "error" in r.json()
