"""Validation of /v1/chat/completions bodies. Anything unsupported is a 400, never ignored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpuprov_gateway.errors import APIError, bad_request

ROLES = ("system", "user", "assistant")
KNOWN = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "seed", "user", "stream", "stream_options", "n", "tools", "tool_choice", "functions",
    "function_call", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
    "response_format", "parallel_tool_calls", "logit_bias",
}
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "top_logprobs", "logit_bias",
               "parallel_tool_calls")


@dataclass
class ChatParams:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    user: str | None = None
    stream: bool = False
    include_usage: bool = False

    def cache_view(self) -> dict[str, Any]:
        return {
            "model": self.model, "messages": self.messages, "max_tokens": self.max_tokens,
            "top_p": self.top_p, "stop": self.stop, "seed": self.seed,
        }


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise bad_request(f"'{name}' must be a number", name, "invalid_type")
    if not lo <= v <= hi:
        raise bad_request(f"'{name}' must be between {lo} and {hi}", name, "invalid_value")
    return float(v)


def _content(m: dict[str, Any], i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for p in c:
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise bad_request(
                    f"messages[{i}].content: only text parts are supported",
                    f"messages[{i}].content", "invalid_type",
                )
            parts.append(p["text"])
        return "".join(parts)
    if c is None and m.get("role") == "assistant":
        return ""
    raise bad_request(
        f"messages[{i}].content must be a string", f"messages[{i}].content", "invalid_type"
    )


def _messages(v: Any) -> list[dict[str, str]]:
    if v is None:
        raise bad_request("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(v, list):
        raise bad_request("'messages' must be an array", "messages", "invalid_type")
    if not v:
        raise bad_request("'messages' must not be empty", "messages", "invalid_value")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(
                f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})",
                f"messages[{i}].role", "invalid_value",
            )
        extra = set(m) - {"role", "content", "name", "reasoning_content", "prefix"}
        if extra:
            raise bad_request(
                f"messages[{i}]: unsupported field(s) {', '.join(sorted(extra))}",
                f"messages[{i}]", "unsupported_parameter",
            )
        rc = m.get("reasoning_content")
        if rc is not None and (role != "assistant" or not isinstance(rc, str)):
            raise bad_request(
                f"messages[{i}].reasoning_content: only a string on assistant messages",
                f"messages[{i}].reasoning_content", "invalid_value",
            )
        if m.get("prefix"):
            raise bad_request("prefix completion is not supported", f"messages[{i}].prefix",
                              "unsupported_parameter")
        # reasoning_content is accepted and dropped: it is never sent to the model.
        out.append({"role": role, "content": _content(m, i)})
    if not any(m["role"] == "user" for m in out):
        raise bad_request("'messages' needs at least one user message", "messages", "invalid_value")
    return out


def parse_chat(body: Any) -> ChatParams:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", None, "invalid_type")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise bad_request(f"Unrecognized request argument(s): {', '.join(unknown)}", unknown[0],
                          "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string", "model", "invalid_type")
    messages = _messages(body.get("messages"))
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise bad_request("only n=1 is supported", "n", "unsupported_parameter")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise bad_request(f"'{name}' is not supported by this gateway", name,
                              "unsupported_parameter")
    if body.get("logprobs") not in (None, False):
        raise bad_request("'logprobs' is not supported by this gateway", "logprobs",
                          "unsupported_parameter")
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise bad_request("only response_format {\"type\": \"text\"} is supported",
                          "response_format", "unsupported_parameter")
    for pen in ("frequency_penalty", "presence_penalty"):
        if _number(body, pen, 0.0, -2.0, 2.0) != 0.0:
            raise bad_request(f"'{pen}' other than 0 is not supported", pen,
                              "unsupported_parameter")
    mt_name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    mt = body.get(mt_name)
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
        raise bad_request(f"'{mt_name}' must be a positive integer", mt_name, "invalid_value")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        stops = list(stop)
    else:
        raise bad_request("'stop' must be a string or a list of at most 16 strings", "stop",
                          "invalid_type")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("'seed' must be an integer", "seed", "invalid_type")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("'user' must be a string", "user", "invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream", "invalid_type")
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
            raise bad_request("'stream_options' must be {\"include_usage\": bool}",
                              "stream_options", "invalid_type")
        if not stream:
            raise bad_request("'stream_options' is only allowed with stream: true",
                              "stream_options", "invalid_value")
        include_usage = bool(so.get("include_usage", False))
    return ChatParams(
        model=model,
        messages=messages,
        max_tokens=mt,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=stops,
        seed=seed,
        user=user,
        stream=stream,
        include_usage=include_usage,
    )


__all__ = ["APIError", "ChatParams", "parse_chat"]
