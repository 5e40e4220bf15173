"""plugins/strategy/mitogen_linear.py: the run's one listing of the installed collections."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import ansible.collections.list as collection_list
import pytest
from ansible.plugins.loader import init_plugin_loader

ROOT = Path(__file__).resolve().parents[1]


def _plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gpuprov_strategy", ROOT / "plugins" / "strategy" / "mitogen_linear.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_collections_are_listed_once_and_as_ansible_lists_them(monkeypatch: pytest.MonkeyPatch) -> None:
    init_plugin_loader()  # the collection loader, as ansible-playbook installs it
    plugin = _plugin()
    expected = list(collection_list.list_collection_dirs())
    assert any(b"/ansible_collections/community/crypto" in d for d in expected)
    calls: list[tuple] = []

    def counted(*args: object, **kwargs: object) -> Iterator[bytes]:
        calls.append((args, kwargs))
        return iter(expected)

    monkeypatch.setattr(plugin, "_list_collection_dirs", counted)
    for _ in range(3):
        assert list(plugin._list_collection_dirs_once()) == expected
    assert calls == [((), {})]
    # Any other listing (a filter, other paths) is Ansible's own, every time.
    list(plugin._list_collection_dirs_once(coll_filter="community.crypto"))
    assert calls[1:] == [((), {"coll_filter": "community.crypto"})]
