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
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import ansible.collections.list as collection_list
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as MitogenLinear

_list_collection_dirs = collection_list.list_collection_dirs


@functools.cache
def _installed_collection_dirs() -> tuple[bytes, ...]:
    return tuple(_list_collection_dirs())


def _list_collection_dirs_once(*args: Any, **kwargs: Any) -> Iterator[bytes]:
    """The default listing (no arguments: what Mitogen's planner asks) from the run's one listing;
    any other listing as Ansible makes it."""
    if args or kwargs:
        return _list_collection_dirs(*args, **kwargs)
    return iter(_installed_collection_dirs())


class StrategyModule(MitogenLinear):
    def run(self, iterator: Any, play_context: Any) -> int:
        if iterator._play.connection in ("local", "ansible.builtin.local"):
            return LinearStrategy.run(self, iterator, play_context)
        # Before the first task's worker is forked: every worker inherits the listing.
        collection_list.list_collection_dirs = _list_collection_dirs_once
        _installed_collection_dirs()
        return super().run(iterator, play_context)
