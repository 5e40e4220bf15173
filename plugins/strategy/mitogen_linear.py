"""Mitogen for Ansible's linear strategy (the `mitogen` package pinned in pyproject.toml).

Ansible finds strategies by path; this file puts the one of the installed package on
`strategy_plugins` (ansible.cfg), wherever the controller's venv lives. Mitogen keeps one Python
interpreter per host for the whole run and sends each task to it, instead of starting a new
interpreter (and, over `docker exec`, a new process in the container) for every task.

Plays of `connection: local` (Molecule's create and destroy plays) run under Ansible's own linear
strategy: Mitogen 0.3.54 loses their async jobs.

The installed collections are listed once per run, in the controller's main process. Mitogen's
planner lists them (`ansible.collections.list.list_collection_dirs`) for every task of a
collection's module, in the task's worker: a fresh fork, so nothing it learnt survives the task,
and the listing imports every collection of the `ansible` package and parses its
meta/runtime.yml. Measured on a converged scenario (35 tasks on two hosts), that was a quarter of
the controller's processor time.

Two more things every worker did for itself are done once, in the main process, before the first
worker is forked: compiling templates (plugins/template_cache.py, kept on the controller's disk; its
docstring says how, GPUPROV_TEMPLATE_CACHE=off switches it off) and loading Ansible's filters and
tests and ansible-core's action plugins (importing their files). A cProfile of the workers of
tests/test_triton_container.py (12 hosts, one run), in processor time: 7.7 s, 6.4 s with the
compiled templates, 5.9 s with the plugins loaded too.
"""

from __future__ import annotations

import functools
import importlib.util
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import ansible.collections.list as collection_list
import ansible.plugins.action as builtin_actions
from ansible.plugins.loader import action_loader, filter_loader, test_loader
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as MitogenLinear

_list_collection_dirs = collection_list.list_collection_dirs
_TEMPLATE_CACHE = "gpuprov_template_cache"


def _template_cache() -> ModuleType:
    """plugins/template_cache.py, loaded once per process (Ansible may load this file again)."""
    if _TEMPLATE_CACHE not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "template_cache.py"
        spec = importlib.util.spec_from_file_location(_TEMPLATE_CACHE, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[_TEMPLATE_CACHE] = module
        spec.loader.exec_module(module)
    return sys.modules[_TEMPLATE_CACHE]


@functools.cache
def _installed_collection_dirs() -> tuple[bytes, ...]:
    return tuple(_list_collection_dirs())


def _list_collection_dirs_once(*args: Any, **kwargs: Any) -> Iterator[bytes]:
    """The default listing (no arguments: what Mitogen's planner asks) from the run's one listing;
    any other listing as Ansible makes it."""
    if args or kwargs:
        return _list_collection_dirs(*args, **kwargs)
    return iter(_installed_collection_dirs())


def _load_plugins() -> None:
    """Ansible's filters, tests and own action plugins, loaded in the main process: each task's
    worker (a fresh fork) loaded them again for itself, importing their files, on first use. The
    filters and tests as a worker's first template loads them (every one on the configured paths);
    of the action plugins only ansible-core's, by their `ansible.builtin.` names, so that no other
    plugin file is imported that the run would not have."""
    for loader in (filter_loader, test_loader):
        for _plugin in loader.all():
            pass
    for module in pkgutil.iter_modules(builtin_actions.__path__):
        action_loader.get(f"ansible.builtin.{module.name}", class_only=True)
    # The packages behind the filters' and tests' `ansible.builtin.` names, which the tasks use.
    filter_loader.get("ansible.builtin.to_json")
    test_loader.get("ansible.builtin.version")


class StrategyModule(MitogenLinear):
    def run(self, iterator: Any, play_context: Any) -> int:
        _template_cache().ensure_installed()
        _load_plugins()
        if iterator._play.connection in ("local", "ansible.builtin.local"):
            return LinearStrategy.run(self, iterator, play_context)
        # Before the first task's worker is forked: every worker inherits the listing.
        collection_list.list_collection_dirs = _list_collection_dirs_once
        _installed_collection_dirs()
        return super().run(iterator, play_context)
