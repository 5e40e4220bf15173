"""What a backend yields while generating, and the request it is given."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenRequest:
    """A validated chat request, ready for any backend."""

    public_model: str
    messages: list[dict[str, str]]  # role + content only (reasoning_content removed)
    prompt: str  # rendered with the chat template (for Triton)
    prompt_tokens: int
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    user: str | None = None


@dataclass
class Delta:
    """A piece of output. raw: undivided model text (may hold <think>); else already split."""

    raw: str = ""
    reasoning: str = ""
    content: str = ""


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_hit_tokens: int | None = None


@dataclass
class Finish:
    reason: str | None  # "stop", "length" or None (decide from the token count)


Event = Delta | Usage | Finish


class BackendError(Exception):
    """A backend failed. retryable: connection error, 429, 5xx, or an error before output."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
