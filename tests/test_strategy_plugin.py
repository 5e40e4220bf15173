"""plugins/strategy/mitogen_linear.py: what the main process does once for every task's worker (the
installed collections listed, the filter, test and action plugins loaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


_LISTINGS = """
import importlib.util, sys
import ansible.collections.list as collection_list
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader()  # the collection loader, as ansible-playbook installs it
spec = importlib.util.spec_from_file_location("gpuprov_strategy", sys.argv[1])
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
expected = list(collection_list.list_collection_dirs())
assert any(b"/ansible_collections/community/crypto" in d for d in expected)
calls = []
def counted(*args, **kwargs):
    calls.append((args, kwargs))
    return iter(expected)
plugin._list_collection_dirs = counted
for _ in range(3):
    assert list(plugin._list_collection_dirs_once()) == expected
assert calls == [((), {})], calls
# Any other listing (a filter, other paths) is Ansible's own, every time.
list(plugin._list_collection_dirs_once(coll_filter="community.crypto"))
assert calls[1:] == [((), {"coll_filter": "community.crypto"})], calls
print("listed once")
"""


def test_the_collections_are_listed_once_and_as_ansible_lists_them() -> None:
    """In a process of its own, as ansible-playbook's: the collection loader installed first (a
    test that imported `ansible_collections` before, in this process, would leave it a plain
    namespace package)."""
    result = subprocess.run(
        [sys.executable, "-c", _LISTINGS, str(ROOT / "plugins" / "strategy" / "mitogen_linear.py")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "listed once", result.stdout + result.stderr


_LOOKUPS = """
import importlib.util, sys
from ansible.plugins.loader import action_loader, filter_loader, init_plugin_loader, test_loader
init_plugin_loader()
spec = importlib.util.spec_from_file_location("gpuprov_strategy", sys.argv[1])
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
if sys.argv[2] == "loaded":
    plugin._load_plugins()
before = set(sys.modules)
assert filter_loader.get("to_json") and filter_loader.get("ansible.builtin.b64encode")
assert test_loader.get("version") and action_loader.get("ansible.builtin.template", class_only=True)
print(len(set(sys.modules) - before))
"""


@pytest.mark.parametrize("state", ["loaded", "not loaded"])
def test_a_worker_finds_the_filters_tests_and_actions_loaded(state: str) -> None:
    """What a task's worker (a fork of the main process) imports to get a filter, a test and an
    action plugin: nothing once the strategy loaded them, their files otherwise."""
    result = subprocess.run(
        [sys.executable, "-c", _LOOKUPS, str(ROOT / "plugins" / "strategy" / "mitogen_linear.py"), state],
        capture_output=True, text=True, timeout=120, check=True,
    )
    imported = int(result.stdout.strip().splitlines()[-1])
    assert (imported == 0) if state == "loaded" else (imported >= 3), imported
