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
from ansible._internal._datatag._tags import Origin, VaultedValue
from ansible.errors import AnsibleError
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, VaultSecret
from ansible.template import Templar, trust_as_template
from jinja2 import pass_context

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


_PLAIN_FILE = ROOT / "roles" / "base" / "defaults" / "main.yml"  # a plain file of the repository


def _from_file(text: str, path: Path = _PLAIN_FILE) -> str:
    """Text as Ansible loads it from a file: trusted as a template, with its origin."""
    return Origin(path=str(path), line_num=1).tag(trust_as_template(text))


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
    rendered: list[Any] = [templar.template(_from_file(t)) for t in TEMPLATES]
    rendered += [templar.evaluate_conditional(_from_file(c)) for c in CONDITIONALS]
    return rendered


def test_the_cached_code_renders_as_jinja_compiles_it(cache_module: ModuleType, tmp_path: Path) -> None:
    expected = _render_all()  # Jinja's own compiling
    assert expected[4] == "C:\\newfile and \\n outside"  # the backslash kept inside the expression
    assert expected[6] == "\nkept\n" and expected[7] == "trimmed\n"  # the header's overlay, the default
    cold = cache_module.install(tmp_path)
    assert _render_all() == expected
    written = sorted(p.name for p in (tmp_path).iterdir())
    assert cold.counts["compiled"] == len(TEMPLATES) + len(CONDITIONALS)
    # All but the `#jinja2:` header's, whose text Ansible hands over stripped of its origin.
    assert len(written) == len(TEMPLATES) + len(CONDITIONALS) - 1
    # A new process's cache (a forked worker's, the next run's): every one from the disk.
    warm = cache_module.install(tmp_path)
    assert _render_all() == expected
    assert warm.counts == {"memory": 0, "disk": len(written), "compiled": 1}
    # In one process, the second use of a template is from memory.
    _render_all()
    assert warm.counts["memory"] == len(written) + 1
    # The owner's only.
    assert all((tmp_path / name).stat().st_mode & 0o077 == 0 for name in written)


def test_one_text_under_other_settings_is_compiled_apart(cache_module: ModuleType, tmp_path: Path) -> None:
    cache = cache_module.install(tmp_path)
    templar = Templar(loader=DataLoader(), variables=VARIABLES)
    # One template with Ansible's backslash escaping inside `{{ }}` (the default) and without it.
    text = _from_file("{{ 'a\\tb' }}")
    assert templar.template(text) == "a\\tb"
    assert templar.template(text, escape_backslashes=False) == "a\tb"
    assert cache.counts["compiled"] == 2
    # One text under the default delimiters and under a header's (the header is taken off first).
    assert templar.template(_from_file("[[ a ]] {{ a }}")) == "[[ a ]] one"
    header = "#jinja2: variable_start_string: '[[', variable_end_string: ']]'\n[[ a ]] {{ a }}"
    assert templar.template(_from_file(header)) == "one {{ a }}"
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
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new-")]
    templar = Templar(loader=DataLoader(), variables=VARIABLES)

    def errors() -> list[str]:
        found = []
        for broken in (lambda: templar.template(_from_file("{{ a + }}")),
                       lambda: templar.evaluate_conditional(_from_file("a == 'one' b"))):
            with pytest.raises(AnsibleError) as error:
                broken()
            found.append(str(error.value))
        return found

    cached = errors()
    cache_module.uninstall()
    assert cached == errors()
    assert "unexpected 'end of print statement'" in cached[0] and "chunk after expression" in cached[1]


def test_a_vault_s_plaintext_never_reaches_the_disk(cache_module: ModuleType, tmp_path: Path) -> None:
    cache = cache_module.install(tmp_path / "cache")
    loader = DataLoader()
    secret = VaultSecret(b"lab-vault-password")
    loader.set_vault_secrets([("default", secret)])
    # A whole encrypted variables file (group_vars/*/vault.yml, -e @secrets.yml), as Ansible loads it.
    vault_file = tmp_path / "vault.yml"
    vault_file.write_bytes(VaultLib([("default", secret)]).encrypt(b"db_url: 'postgres://u:S3cret@{{ a }}/db'\n"))
    from_vault = loader.load_from_file(str(vault_file), trusted_as_template=True)["db_url"]
    # An inline `!vault` value; a text of no file (an extra variable given on the command line).
    inline = VaultedValue(ciphertext="$ANSIBLE_VAULT;1.1;AES256\n00").tag(_from_file("hunter2-{{ a }}"))
    no_origin = trust_as_template("token-{{ a }}")
    templar = Templar(loader=loader, variables=VARIABLES)
    assert templar.template(from_vault) == "postgres://u:S3cret@one/db"
    assert templar.template(inline) == "hunter2-one"
    assert templar.template(no_origin) == "token-one"
    assert cache.counts["compiled"] == 3
    assert not list((tmp_path / "cache").iterdir())
    # A vaulted template's string constants that look like templates, which Ansible renders with
    # the origin of the (plain) file that holds the `!vault` value: a lookup's argument, a
    # conditional's operand.
    def vaulted(text: str) -> str:
        return VaultedValue(ciphertext="$ANSIBLE_VAULT;1.1;AES256\n00").tag(_from_file(text))

    assert templar.template(vaulted("{{ lookup('env', 'NO_SUCH{{ \"S3CR3T-LOOKUP\" }}') }}")) == ""
    assert templar.evaluate_conditional(vaulted("'S3CR3T-COND-{{ 1 }}' == 'x'")) is False
    assert cache.counts["compiled"] >= 6
    assert not list((tmp_path / "cache").iterdir())
    # A plain file's text is written.
    assert templar.template(_from_file("plain-{{ a }}")) == "plain-one"
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_filter_that_changed_is_compiled_again(cache_module: ModuleType, tmp_path: Path) -> None:
    """The generated code passes a filter Jinja's context or not as the filter asked when it was
    compiled: one that asks otherwise now, or is gone, means compiling again (and its error)."""
    def plain(value: Any) -> str:
        return f"plain:{value}"

    @pass_context
    def with_context(context: Any, value: Any) -> str:
        return f"context:{value}:{context.get('a')}"

    def templar_with(probe: Any) -> Templar:
        templar = Templar(loader=DataLoader(), variables=VARIABLES)
        if probe is not None:
            templar.environment.filters["gpuprov_probe"] = probe
        return templar

    cache_module.install(tmp_path)
    text = _from_file("{% for i in items[:1] %}{{ i | gpuprov_probe }}{% endfor %}!")
    assert templar_with(plain).template(text) == "plain:x!"
    again = cache_module.install(tmp_path)  # a new process, the same file
    assert templar_with(with_context).template(text) == "context:x:one!"
    assert again.counts["compiled"] == 1
    assert templar_with(plain).template(text) == "plain:x!"
    with pytest.raises(AnsibleError, match="gpuprov_probe"):
        templar_with(None).template(text)


def test_a_directory_others_can_write_to_is_not_used(cache_module: ModuleType, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    cache = cache_module.install(shared)
    templar = Templar(loader=DataLoader(), variables=VARIABLES)
    assert templar.template(_from_file("{{ a }}-shared")) == "one-shared"
    assert cache.counts["compiled"] == 1 and not list(shared.iterdir())
    # Our own directory under one that others may write to (no sticky bit): they could replace it.
    under = shared / "mine"
    assert cache_module.install(under).directory is None
    # Under a sticky one (as /tmp, where tmp_path is): ours.
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert cache_module.install(sticky / "mine").directory == sticky / "mine"


def test_loaded_twice_it_still_calls_jinja_s_own_compiling(cache_module: ModuleType, tmp_path: Path) -> None:
    from ansible._internal._templating._jinja_bits import AnsibleEnvironment
    from jinja2 import Environment

    cache_module.install(tmp_path)
    second = _load()  # as a reload or another name would: it must not take the first's methods for Jinja's
    try:
        second.install(tmp_path / "second")
        assert _render_all()[0] == "one/2"
    finally:
        second.uninstall()
    assert AnsibleEnvironment.compile is Environment.compile


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
