"""Splitting model output into reasoning (<think>...</think>) and content, incrementally."""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of buf that is a proper prefix of tag."""
    for n in range(min(len(buf), len(tag) - 1), 0, -1):
        if tag.startswith(buf[-n:]):
            return n
    return 0


class ThinkSplitter:
    """feed() raw text pieces, get (reasoning, content) deltas.

    If the prompt already opened <think>, output starts inside the think block
    and may only contain </think>; a repeated leading <think> is dropped.
    """

    def __init__(self, starts_in_think: bool) -> None:
        self.state = "open?" if starts_in_think else "start"
        self.buf = ""
        self.strip_next = False

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        reasoning, content = "", ""
        while True:
            if self.state in ("start", "open?"):
                s = self.buf.lstrip()
                if s.startswith(OPEN):
                    self.buf = s[len(OPEN):]
                    self.state = "think"
                    self.strip_next = True
                    continue
                if OPEN.startswith(s):  # undecided yet (also empty)
                    return reasoning, content
                self.state = "think" if self.state == "open?" else "content"
                self.strip_next = self.state == "think"
                continue
            if self.state == "think":
                if self.strip_next:
                    self.buf = self.buf.lstrip()
                    if not self.buf:
                        return reasoning, content
                    self.strip_next = False
                i = self.buf.find(CLOSE)
                if i >= 0:
                    reasoning += self.buf[:i].rstrip()
                    self.buf = self.buf[i + len(CLOSE):]
                    self.state = "content"
                    self.strip_next = True
                    continue
                # Hold back a possible partial </think> and trailing whitespace.
                keep = _partial_suffix(self.buf, CLOSE)
                body = self.buf[: len(self.buf) - keep]
                keep += len(body) - len(body.rstrip())
                reasoning += self.buf[: len(self.buf) - keep]
                self.buf = self.buf[len(self.buf) - keep:]
                return reasoning, content
            # content
            if self.strip_next:
                self.buf = self.buf.lstrip()
                if not self.buf:
                    return reasoning, content
                self.strip_next = False
            content += self.buf
            self.buf = ""
            return reasoning, content

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        if self.state in ("think", "open?"):
            return rest.strip(), ""
        return "", rest.lstrip() if self.strip_next else rest


class StopMatcher:
    """Cuts the stream at the first stop string, holding back possible partial matches."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buf = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.buf[: min(hits)]
            self.buf = ""
            self.stopped = True
            return out
        cut = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return "" if self.stopped else out
