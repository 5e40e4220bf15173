"""Compiled Jinja templates kept on the controller's disk, for every worker of every run.

Ansible compiles each template and conditional it renders (Jinja's lexer, parser, code generator,
then Python's `compile`) and keeps nothing: each task's worker is a fresh fork of the run's main
process, so the next task, and the same task on the next host, compiles the same text again. On
this project's runs that was the largest share of the workers' own processor time (measured:
benchmarks/results/). Jinja caches compiled code for templates it loads by name (its bytecode
cache); Ansible compiles from strings, which Jinja does not cache.

Here the code object of each compiled template or expression is kept under a key of its text and
every setting that changes the generated code (delimiters, whitespace handling, the environment's
class, Ansible's compile-time backslash escaping), in a directory named after the versions of
ansible-core, Jinja and Python. Loading it replaces the compiling; rendering is unchanged (the
code is Jinja's own, executed as Jinja executes it). Anything unusual (a template name, a debug
setting, a custom autoescape, a text that came from a vault) takes Jinja's own path, uncached or
cached in memory only; a file that cannot be read is compiled again and replaced. One thing the
generated code takes from its environment is left out of the key: whether a filter or test passes
Jinja's context to its function. Two plugins of one name that differ in that (none do in this
repository) would need `GPUPROV_TEMPLATE_CACHE=off`; a filter missing at run time fails as it would
have at compile time ("No filter named ...").

`GPUPROV_TEMPLATE_CACHE`: the directory to use instead of `$XDG_CACHE_HOME/gpuprov/templates`
(`~/.cache/...`), or `off`. Removing the directory at any time is safe.

Installed by the strategy (plugins/strategy/mitogen_linear.py) in the run's main process, before the
first worker is forked.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
import tempfile
from pathlib import Path
from types import CodeType
from typing import Any

import jinja2
from ansible._internal._datatag._tags import VaultedValue
from ansible._internal._templating import _jinja_bits
from ansible.release import __version__ as ansible_version
from jinja2 import nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser

_Environment = _jinja_bits.AnsibleEnvironment
_jinja_compile = _Environment.compile
_jinja_compile_expression = _Environment.compile_expression

VERSION = f"ansible-core-{ansible_version}-jinja2-{jinja2.__version__}-{sys.implementation.cache_tag}"


def default_directory() -> Path | None:
    """The cache directory of this controller, None when switched off."""
    setting = os.environ.get("GPUPROV_TEMPLATE_CACHE", "")
    if setting == "off":
        return None
    if setting:
        return Path(setting) / VERSION
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (a user without one): compiled as before
            return None
    return Path(base) / "gpuprov" / "templates" / VERSION


class CodeCache:
    """Code objects by key: in this process's memory, then in the directory (if any)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.memory: dict[str, CodeType] = {}
        self.counts = {"memory": 0, "disk": 0, "compiled": 0}

    def get(self, key: str) -> CodeType | None:
        code = self.memory.get(key)
        if code is not None:
            self.counts["memory"] += 1
            return code
        if self.directory is None:
            return None
        try:
            loaded = marshal.loads((self.directory / key).read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return None  # absent, unreadable or cut short: compiled again and replaced
        if not isinstance(loaded, CodeType):
            return None
        self.counts["disk"] += 1
        self.memory[key] = loaded
        return loaded

    def put(self, key: str, code: CodeType, persist: bool) -> None:
        self.counts["compiled"] += 1
        self.memory[key] = code
        if self.directory is None or not persist:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkstemp's file is the owner's only (0600); the rename makes it whole or absent.
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".new-")
            with os.fdopen(fd, "wb") as out:
                out.write(marshal.dumps(code))
            os.replace(temporary, self.directory / key)
        except (OSError, ValueError):
            pass  # a full or read-only disk: this process keeps it in memory


_cache: CodeCache | None = None


def _settings(env: Any) -> tuple[Any, ...] | None:
    """Everything besides the text that the generated code depends on; None: do not cache."""
    if not isinstance(env.autoescape, bool) or env._debuggable_template_source:
        return None
    compile_context = _jinja_bits._TemplateCompileContext.current(optional=True)
    return (
        f"{type(env).__module__}.{type(env).__qualname__}",
        env.block_start_string, env.block_end_string,
        env.variable_start_string, env.variable_end_string,
        env.comment_start_string, env.comment_end_string,
        env.line_statement_prefix, env.line_comment_prefix,
        env.trim_blocks, env.lstrip_blocks, env.newline_sequence, env.keep_trailing_newline,
        env.optimized, env.autoescape, env.is_async, tuple(sorted(env.extensions)),
        getattr(env.finalize, "__qualname__", repr(env.finalize)),
        compile_context.escape_backslashes if compile_context else None,
        _jinja_bits._TemplateConfig.allow_embedded_templates,
    )


def _key(env: Any, kind: str, source: str, *options: Any) -> str | None:
    settings = _settings(env)
    if settings is None:
        return None
    text = str.__str__(source)  # the text alone, whatever tags (origin, trust) it carries
    return hashlib.sha256(repr((kind, text, options, settings)).encode()).hexdigest()


def _persistable(source: str) -> bool:
    """A vault's plaintext never reaches the disk, even as part of compiled code."""
    return not VaultedValue.is_tagged_on(source)


def _compile(
    self: Any, source: Any, name: str | None = None, filename: str | None = None,
    raw: bool = False, defer_init: bool = False,
) -> Any:
    """Environment.compile: a template's text, compiled once (Ansible's from_string)."""
    if _cache is None or raw or defer_init or name is not None or filename is not None or not isinstance(source, str):
        return _jinja_compile(self, source, name, filename, raw, defer_init)
    key = _key(self, "template", source)
    if key is None:
        return _jinja_compile(self, source)
    code = _cache.get(key)
    if code is None:
        code = _jinja_compile(self, source)
        _cache.put(key, code, _persistable(source))
    return code


def _compile_expression(self: Any, source: Any, undefined_to_none: bool = True) -> Any:
    """Environment.compile_expression (conditionals, `{{ }}`-less expressions), compiled once."""
    key = _key(self, "expression", source, undefined_to_none) if _cache and isinstance(source, str) else None
    if key is None or _cache is None:
        return _jinja_compile_expression(self, source, undefined_to_none)
    code = _cache.get(key)
    if code is None:
        # As Jinja 3.1's compile_expression builds its template; a syntax error is raised by
        # Jinja's own method, with its message.
        parser = Parser(self, source, state="variable")
        try:
            expression = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno, None, None)
        except TemplateSyntaxError:
            return _jinja_compile_expression(self, source, undefined_to_none)
        expression.set_environment(self)
        body = [nodes.Assign(nodes.Name("result", "store"), expression, lineno=1)]
        code = _jinja_compile(self, nodes.Template(body, lineno=1))
        _cache.put(key, code, _persistable(source))
    template = self.template_class.from_code(self, code, self.make_globals(None), None)
    return TemplateExpression(template, undefined_to_none)


def install(directory: Path | None) -> CodeCache:
    """Compile through the cache in this process (and the workers it forks from now on)."""
    global _cache
    _cache = CodeCache(directory)
    _Environment.compile = _compile
    _Environment.compile_expression = _compile_expression
    return _cache


def uninstall() -> None:
    """Jinja's own compiling again."""
    global _cache
    _cache = None
    _Environment.compile = _jinja_compile
    _Environment.compile_expression = _jinja_compile_expression
