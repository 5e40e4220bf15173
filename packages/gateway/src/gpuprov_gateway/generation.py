"""Turning backend events into reasoning/content deltas, usage and a finish reason."""

from __future__ import annotations

from typing import Any

from gpuprov_gateway.events import Delta, Finish, GenRequest, Usage
from gpuprov_gateway.reasoning import StopMatcher, ThinkSplitter
from gpuprov_gateway.template import ChatRenderer


class Generation:
    def __init__(self, renderer: ChatRenderer, req: GenRequest) -> None:
        self.renderer = renderer
        self.req = req
        self.stopper = StopMatcher(req.stop)
        self.splitter = ThinkSplitter(ChatRenderer.opens_think(req.prompt))
        self.raw: list[str] = []
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.usage = Usage()
        self.backend_finish: str | None = None
        self.stopped = False

    def _keep(self, r: str, c: str) -> tuple[str, str]:
        if r:
            self.reasoning.append(r)
        if c:
            self.content.append(c)
        return r, c

    def on_delta(self, d: Delta) -> tuple[str, str]:
        if not d.raw:
            return self._keep(d.reasoning, d.content)
        self.raw.append(d.raw)
        text = self.stopper.feed(d.raw)
        r, c = self.splitter.feed(text)
        if self.stopper.stopped:
            self.stopped = True
            r2, c2 = self.splitter.flush()
            r, c = r + r2, c + c2
        return self._keep(r, c)

    def on_event(self, ev: Delta | Usage | Finish) -> tuple[str, str]:
        if isinstance(ev, Delta):
            return self.on_delta(ev)
        if isinstance(ev, Usage):
            self.usage = ev
        elif isinstance(ev, Finish):
            self.backend_finish = ev.reason
        return "", ""

    def close(self) -> tuple[str, str]:
        """Flush what was held back (partial stop string or tag) at the end of output."""
        if self.stopped:
            return "", ""
        r, c = self.splitter.feed(self.stopper.flush())
        r2, c2 = self.splitter.flush()
        return self._keep(r + r2, c + c2)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def content_text(self) -> str:
        return "".join(self.content)

    def completion_tokens(self) -> int:
        if self.usage.completion_tokens is not None and not self.stopped:
            return self.usage.completion_tokens
        if self.raw:
            return self.renderer.count("".join(self.raw))
        return self.renderer.count(self.reasoning_text + self.content_text)

    def finish_reason(self) -> str:
        if self.stopped:
            return "stop"
        if self.backend_finish:
            return self.backend_finish
        return "length" if self.completion_tokens() >= self.req.max_tokens else "stop"

    def usage_dict(self) -> dict[str, Any]:
        prompt = self.usage.prompt_tokens
        if prompt is None:
            prompt = self.req.prompt_tokens
        completion = self.completion_tokens()
        reasoning = self.usage.reasoning_tokens
        if reasoning is None:
            reasoning = min(completion, self.renderer.count(self.reasoning_text))
        hit = self.usage.cache_hit_tokens or 0
        return usage_dict(prompt, completion, reasoning, hit)


def usage_dict(prompt: int, completion: int, reasoning: int, hit: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": max(0, prompt - hit),
        "prompt_tokens_details": {"cached_tokens": hit},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
