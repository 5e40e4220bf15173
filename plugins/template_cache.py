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
ansible-core, Jinja and Python. Beside the code it keeps the one thing the code generator takes from
the plugins: for each filter and test the template names, whether it exists and which argument
Jinja passes it (context, environment, ...). That is checked again at every load, so a plugin
added, removed or changed in that respect means compiling again (a missing one fails as without the
cache). Loading replaces the compiling; rendering is unchanged (the code is Jinja's own, run as
Jinja runs it). Anything unusual (a template name, a debug setting, a custom autoescape, Jinja's
constant folding, which Ansible turns off) takes Jinja's own path; a file that cannot be read is
compiled again and replaced.

What reaches the disk: only text that came from a file that is not encrypted (its origin's path,
checked for a vault header once per file) and was not decrypted from a vault (inline `!vault`
values, whole-file vaults, encrypted templates), and nothing compiled while such text is being
rendered (its string constants that look like templates); anything else (extra variables given on
the command line, text without an origin) is cached in the process's memory only. Whether a file
is a vault is read when the text is compiled, once per file and process. The directory must be the
user's own, writable by no one else and not replaceable by anyone else (every directory above it
root's or the user's, writable by others only with the sticky bit), or nothing is read from or
written to it: its files are code this process runs.

`GPUPROV_TEMPLATE_CACHE`: the directory to use instead of `$XDG_CACHE_HOME/gpuprov/templates`
(`~/.cache/...`), or `off`. Removing the directory at any time is safe.

Installed by the strategy (plugins/strategy/mitogen_linear.py) in the run's main process, before the
first worker is forked. Only for Jinja 3.1 (an expression's template is built as its
`compile_expression` builds it).
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from types import CodeType
from typing import Any

import jinja2
from ansible._internal._datatag._tags import Origin, SourceWasEncrypted, VaultedValue
from ansible._internal._templating import _jinja_bits
from ansible._internal._templating._utils import TemplateContext
from ansible.parsing.vault import EncryptedString
from ansible.release import __version__ as ansible_version
from jinja2 import nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.utils import _PassArg

_Environment = _jinja_bits.AnsibleEnvironment
# Jinja's own methods, kept on the class the first time: loading this file again (under another
# name, or after a reload) must not take the cache's methods for Jinja's.
if "_gpuprov_jinja_compile" not in _Environment.__dict__:
    _Environment._gpuprov_jinja_compile = _Environment.compile
    _Environment._gpuprov_jinja_compile_expression = _Environment.compile_expression
_jinja_compile = _Environment.__dict__["_gpuprov_jinja_compile"]
_jinja_compile_expression = _Environment.__dict__["_gpuprov_jinja_compile_expression"]
FORMAT = 2  # of a file: (FORMAT, plugins signature, code)

VERSION = f"v{FORMAT}-ansible-core-{ansible_version}-jinja2-{jinja2.__version__}-{sys.implementation.cache_tag}"


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


Signature = tuple[tuple[str, str, str], ...]  # (filter|test, name, how Jinja passes it arguments)


def _usable(directory: Path) -> bool:
    """The directory, made if missing, is the user's own and no one else can write to it, nor
    replace it: each directory above it is root's or the user's, and writable by others only
    with the sticky bit (/tmp)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = directory.stat()
        if status.st_uid != os.geteuid() or status.st_mode & 0o022:
            return False
        for parent in directory.resolve().parents:
            status = parent.stat()
            if status.st_uid not in (0, os.geteuid()):
                return False
            if status.st_mode & 0o022 and not status.st_mode & stat.S_ISVTX:
                return False
    except OSError:
        return False
    return True


def _sweep(directory: Path) -> None:
    """Temporary files of writers killed before their rename (an hour old: none still writing)."""
    with contextlib.suppress(OSError):
        for leftover in directory.glob(".new-*"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < time.time() - 3600:
                    leftover.unlink()


class CodeCache:
    """Code objects by key: in this process's memory, then in the directory (if any)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory if directory is not None and _usable(directory) else None
        if self.directory is not None:
            _sweep(self.directory)
        self.memory: dict[str, tuple[Signature, CodeType]] = {}
        self.counts = {"memory": 0, "disk": 0, "compiled": 0}

    def get(self, key: str) -> tuple[Signature, CodeType] | None:
        entry = self.memory.get(key)
        if entry is not None:
            self.counts["memory"] += 1
            return entry
        if self.directory is None:
            return None
        try:
            loaded = marshal.loads((self.directory / key).read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return None  # absent, unreadable or cut short: compiled again and replaced
        if not (isinstance(loaded, tuple) and len(loaded) == 3 and loaded[0] == FORMAT
                and isinstance(loaded[2], CodeType) and _well_formed(loaded[1])):
            return None
        self.counts["disk"] += 1
        self.memory[key] = entry = (loaded[1], loaded[2])
        return entry

    def put(self, key: str, signature: Signature, code: CodeType, persist: bool) -> None:
        self.counts["compiled"] += 1
        self.memory[key] = (signature, code)
        if self.directory is None or not persist:
            return
        temporary = None
        try:
            # mkstemp's file is the owner's only (0600); the rename makes it whole or absent.
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".new-")
            with os.fdopen(fd, "wb") as out:
                out.write(marshal.dumps((FORMAT, signature, code)))
            os.replace(temporary, self.directory / key)
            temporary = None
        except (OSError, ValueError):
            pass  # a full or read-only disk: this process keeps it in memory
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)


def _well_formed(signature: Any) -> bool:
    return isinstance(signature, tuple) and all(
        isinstance(item, tuple) and len(item) == 3 and all(isinstance(part, str) for part in item)
        for item in signature
    )


_cache: CodeCache | None = None


def _settings(env: Any) -> tuple[Any, ...] | None:
    """Everything besides the text and the plugins that the generated code depends on; None: do
    not cache (a callable autoescape, Jinja's debugging of Ansible's templates, constant folding:
    its results would be kept)."""
    if not isinstance(env.autoescape, bool) or env._debuggable_template_source or env.optimized:
        return None
    compile_context = _jinja_bits._TemplateCompileContext.current(optional=True)
    return (
        f"{type(env).__module__}.{type(env).__qualname__}",
        env.block_start_string, env.block_end_string,
        env.variable_start_string, env.variable_end_string,
        env.comment_start_string, env.comment_end_string,
        env.line_statement_prefix, env.line_comment_prefix,
        env.trim_blocks, env.lstrip_blocks, env.newline_sequence, env.keep_trailing_newline,
        env.autoescape, env.is_async, tuple(sorted(env.extensions)),
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


def _signature(env: Any, tree: nodes.Node) -> Signature:
    """What the code generator read from the plugins: each filter's and test's presence and the
    argument Jinja passes it first (jinja2/compiler.py, _filter_test_common)."""
    found = set()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        kind = "filter" if isinstance(node, nodes.Filter) else "test"
        found.add((kind, node.name))
    return tuple(sorted((kind, name, _passes(env, kind, name)) for kind, name in found))


def _passes(env: Any, kind: str, name: str) -> str:
    plugin = (env.filters if kind == "filter" else env.tests).get(name)
    if plugin is None:
        return "missing"
    passes = _PassArg.from_obj(plugin)
    return passes.name if passes else "value"


def _still_holds(env: Any, signature: Signature) -> bool:
    return all(_passes(env, kind, name) == passes for kind, name, passes in signature)


_plaintext_files: dict[str, bool] = {}


def _plaintext_file(path: str) -> bool:
    """The file exists and is not a vault (checked once per file and process)."""
    if path not in _plaintext_files:
        try:
            with open(path, "rb") as f:
                _plaintext_files[path] = not f.read(64).lstrip().startswith(b"$ANSIBLE_VAULT")
        except OSError:
            _plaintext_files[path] = False
    return _plaintext_files[path]


def _vault_derived(value: Any) -> bool:
    if isinstance(value, EncryptedString) or VaultedValue.is_tagged_on(value) or SourceWasEncrypted.is_tagged_on(value):
        return True
    origin = Origin.get_tag(value)
    return origin is not None and bool(origin.path) and not _plaintext_file(origin.path)


def _persistable(source: str) -> bool:
    """Only text read from a plain file reaches the disk, never a vault's plaintext (inline or a
    whole encrypted file), never text of unknown origin (the command line's extra variables), and
    nothing compiled while a vault's text is being rendered: Ansible renders a template's string
    constants that look like templates (`lookup('x', 'a{{ b }}')`, a conditional's) with the
    origin of the file that holds the template, not its vault tag."""
    if _vault_derived(source):
        return False
    origin = Origin.get_tag(source)
    if origin is None or not origin.path:
        return False
    context = TemplateContext.current(optional=True)
    while context is not None:
        if _vault_derived(context.template_value):
            return False
        context = context._parent_ctx
    return True


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
    entry = _cache.get(key)
    if entry is not None and _still_holds(self, entry[0]):
        return entry[1]
    code = _jinja_compile(self, source)  # Jinja's errors, as without the cache
    _cache.put(key, _signature(self, self.parse(source)), code, _persistable(source))
    return code


def _compile_expression(self: Any, source: Any, undefined_to_none: bool = True) -> Any:
    """Environment.compile_expression (conditionals, `{{ }}`-less expressions), compiled once."""
    key = _key(self, "expression", source, undefined_to_none) if _cache and isinstance(source, str) else None
    if key is None or _cache is None:
        return _jinja_compile_expression(self, source, undefined_to_none)
    entry = _cache.get(key)
    if entry is not None and _still_holds(self, entry[0]):
        code = entry[1]
    else:
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
        _cache.put(key, _signature(self, expression), code, _persistable(source))
    template = self.template_class.from_code(self, code, self.make_globals(None), None)
    return TemplateExpression(template, undefined_to_none)


def ensure_installed() -> None:
    """Installed in the default directory, unless it already is or the cache is off."""
    if _cache is None and (directory := default_directory()) is not None:
        install(directory)


def install(directory: Path | None) -> CodeCache | None:
    """Compile through the cache in this process (and the workers it forks from now on); None
    (nothing installed) under a Jinja other than 3.1."""
    global _cache
    if not jinja2.__version__.startswith("3.1."):
        return None
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
