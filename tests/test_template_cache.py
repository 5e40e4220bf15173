"""plugins/template_cache.py: compiled templates from the controller's disk render as Jinja's own."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible._internal._datatag._tags import VaultedValue
from ansible.errors import AnsibleError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[1]

VARIABLES: dict[str, Any] = {"a": "one", "b": 2, "items": ["x", "y", "z"], "path": "/srv/models"}
# Templates as the roles write them: plain substitution, filters, loops, Ansible's backslash
# escaping inside expressions, a `#jinja2:` header (an overlay environment), newlines kept.
TEMPLATES = [
    "{{ a }}/{{ b }}",
    "{{ path }}/{{ missing | default('current') }}",
    "{{ items | map('upper') | join(',') }}",
    "{% for x in items %}{{ loop.index }}={{ x }}\n{% endfor %}",
    "{{ 'C:\\newfile' }} and \\n outside",
    "{{ items | length > 2 and a == 'one' }}",
    "#jinja2: trim_blocks: False\n{% if a %}\nkept\n{% endif %}\n",
    "{% if a %}\ntrimmed\n{% endif %}\n",
    "{{ {'k': b} | to_json }}",
]
CONDITIONALS = ["a == 'one'", "items | length > 1", "undefined_one is defined", "b is number and b > 1"]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("template_cache_under_test", ROOT / "plugins" / "template_cache.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cache_module() -> Iterator[ModuleType]:
    module = _load()
    try:
        yield module
    finally:
        module.uninstall()


def _render_all() -> list[Any]:
    templar = Templar(loader=DataLoader(), variables=VARIABLES)
    rendered: list[Any] = [templar.template(trust_as_template(t)) for t in TEMPLATES]
    rendered += [templar.evaluate_conditional(trust_as_template(c)) for c in CONDITIONALS]
    return rendered


def test_the_cached_code_renders_as_jinja_compiles_it(cache_module: ModuleType, tmp_path: Path) -> None:
    expected = _render_all()  # Jinja's own compiling
    assert expected[4] == "C:\\newfile and \\n outside"  # the backslash kept inside the expression
    assert expected[6] == "\nkept\n" and expected[7] == "trimmed\n"  # the header's overlay, the default
    cold = cache_module.install(tmp_path)
    assert _render_all() == expected
    written = sorted(p.name for p in (tmp_path).iterdir())
    assert cold.counts["compiled"] == len(written) == len(TEMPLATES) + len(CONDITIONALS)
    # A new process's cache (a forked worker's, the next run's): every one from the disk.
    warm = cache_module.install(tmp_path)
    assert _render_all() == expected
    assert warm.counts == {"memory": 0, "disk": len(written), "compiled": 0}
    # In one process, the second use of a template is from memory.
    _render_all()
    assert warm.counts["memory"] == len(written)
    # The owner's only.
    assert all((tmp_path / name).stat().st_mode & 0o077 == 0 for name in written)


def test_one_text_under_other_settings_is_compiled_apart(cache_module: ModuleType, tmp_path: Path) -> None:
    cache = cache_module.install(tmp_path)
    templar = Templar(loader=DataLoader(), variables=VARIABLES)
    # One template with Ansible's backslash escaping inside `{{ }}` (the default) and without it.
    text = trust_as_template("{{ 'a\\tb' }}")
    assert templar.template(text) == "a\\tb"
    assert templar.template(text, escape_backslashes=False) == "a\tb"
    assert cache.counts["compiled"] == 2
    # One text under the default delimiters and under a header's (the header is taken off first).
    assert templar.template(trust_as_template("[[ a ]] {{ a }}")) == "[[ a ]] one"
    header = "#jinja2: variable_start_string: '[[', variable_end_string: ']]'\n[[ a ]] {{ a }}"
    assert templar.template(trust_as_template(header)) == "one {{ a }}"
    assert cache.counts["compiled"] == 4


def test_a_broken_file_is_compiled_again_and_a_syntax_error_reads_as_jinja_s(
    cache_module: ModuleType, tmp_path: Path
) -> None:
    expected = _render_all()
    cache_module.install(tmp_path)
    _render_all()
    for path in tmp_path.iterdir():
        path.write_bytes(path.read_bytes()[:7])  # cut short, as by a full disk
    again = cache_module.install(tmp_path)
    assert _render_all() == expected
    assert again.counts["compiled"] == len(TEMPLATES) + len(CONDITIONALS)
    templar = Templar(loader=DataLoader(), variables=VARIABLES)

    def errors() -> list[str]:
        found = []
        for broken in (lambda: templar.template(trust_as_template("{{ a + }}")),
                       lambda: templar.evaluate_conditional(trust_as_template("a == 'one' b"))):
            with pytest.raises(AnsibleError) as error:
                broken()
            found.append(str(error.value))
        return found

    cached = errors()
    cache_module.uninstall()
    assert cached == errors()
    assert "unexpected 'end of print statement'" in cached[0] and "chunk after expression" in cached[1]


def test_a_vaulted_text_never_reaches_the_disk(cache_module: ModuleType, tmp_path: Path) -> None:
    cache = cache_module.install(tmp_path)
    templar = Templar(loader=DataLoader(), variables=VARIABLES)
    secret = VaultedValue(ciphertext="$ANSIBLE_VAULT;1.1;AES256\n00").tag(trust_as_template("s3cr3t-{{ a }}"))
    assert templar.template(secret) == "s3cr3t-one"
    assert cache.counts["compiled"] == 1
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_off_and_the_default_place(cache_module: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUPROV_TEMPLATE_CACHE", "off")
    assert cache_module.default_directory() is None
    monkeypatch.delenv("GPUPROV_TEMPLATE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = cache_module.default_directory()
    assert directory.parent == tmp_path / "gpuprov" / "templates"
    # Named after what the code depends on: another ansible-core or Jinja starts a new directory.
    assert "ansible-core-2.19" in directory.name and "jinja2-3.1" in directory.name
    # No home directory to be found (a user without one): off, never a failed run.
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HOME")
    monkeypatch.setattr("pwd.getpwuid", lambda _uid: (_ for _ in ()).throw(KeyError("no entry")))
    assert cache_module.default_directory() is None


def test_a_run_fills_the_cache_and_the_next_run_compiles_nothing(tmp_path: Path) -> None:
    """Through ansible-playbook and the strategy, as the lab and the scenarios run: the workers
    write, the next run's workers read (the files' access times are not to be trusted, so the
    second run must leave the directory as it was)."""
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: all\n  gather_facts: false\n  vars:\n    name: '{{ inventory_hostname }}-x'\n  tasks:\n"
        "    - ansible.builtin.assert:\n        that: [\"name == inventory_hostname + '-x'\"]\n"
        "    - ansible.builtin.debug:\n        msg: \"{{ name | upper }}\"\n      when: name is string\n"
    )
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    one: {}\n    two: {}\n  vars:\n    ansible_connection: local\n"
        f"    ansible_python_interpreter: {sys.executable}\n"
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "GPUPROV_TEMPLATE_CACHE": str(cache), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": str(ROOT / "plugins" / "strategy")}
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(play)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert '"msg": "ONE-X"' in first.stdout and '"msg": "TWO-X"' in first.stdout
    files = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert len(files) >= 3  # the play's variable, the assert's expression, the message, the condition
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert '"msg": "ONE-X"' in second.stdout and '"msg": "TWO-X"' in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files
