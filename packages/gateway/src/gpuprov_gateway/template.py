"""Prompt rendering with the model's chat template, and token counting.

With a model directory: ``tokenizer.json`` is loaded with the ``tokenizers``
library and ``tokenizer_config.json``'s ``chat_template`` is rendered in a
sandboxed Jinja2 environment (as Hugging Face does). Without one, the fallback
template below is used and tokens are estimated as ceil(characters / 4).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

# Fallback template, used when no model directory is configured:
#   <|system|>\n{content}\n  <|user|>\n{content}\n  <|assistant|>\n{content}\n  ...
# then "<|assistant|>\n" as the generation prompt.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class TemplateLoadError(Exception):
    pass


def _raise(message: str) -> None:
    raise TemplateError(message)


def _special(cfg: dict[str, Any], name: str) -> str:
    v = cfg.get(name)
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else ""


class ChatRenderer:
    def __init__(self, model_dir: str | None) -> None:
        self.tokenizer: Tokenizer | None = None
        self.specials: dict[str, str] = {"bos_token": "", "eos_token": ""}
        source = FALLBACK_TEMPLATE
        if model_dir:
            d = Path(model_dir)
            try:
                self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
                cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError, Exception) as e:  # tokenizers raises plain Exception
                raise TemplateLoadError(f"cannot load tokenizer from {model_dir}: {e}") from e
            tpl = cfg.get("chat_template")
            if isinstance(tpl, list):  # named templates: take "default"
                tpl = next((t.get("template") for t in tpl if t.get("name") == "default"), None)
            if not isinstance(tpl, str):
                raise TemplateLoadError(f"{model_dir}/tokenizer_config.json has no chat_template")
            source = tpl
            self.specials = {
                "bos_token": _special(cfg, "bos_token"),
                "eos_token": _special(cfg, "eos_token"),
            }
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now(UTC).strftime(fmt)
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
        try:
            self.template = env.from_string(source)
        except TemplateError as e:
            raise TemplateLoadError(f"chat template does not compile: {e}") from e

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.template.render(messages=messages, add_generation_prompt=True, **self.specials)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return math.ceil(len(text) / 4)

    @staticmethod
    def opens_think(prompt: str) -> bool:
        """The generation prompt already opened the think block (DeepSeek-R1 templates)."""
        return prompt.rstrip().endswith("<think>")
