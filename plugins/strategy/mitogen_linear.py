"""Mitogen for Ansible's linear strategy (the `mitogen` package pinned in pyproject.toml).

Ansible finds strategies by path; this file puts the one of the installed package on
`strategy_plugins` (ansible.cfg), wherever the controller's venv lives. Mitogen keeps one Python
interpreter per host for the whole run and sends each task to it, instead of starting a new
interpreter (and, over `docker exec`, a new process in the container) for every task.

Plays of `connection: local` (Molecule's create and destroy plays) run under Ansible's own linear
strategy: Mitogen 0.3.54 loses their async jobs.
"""

from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as MitogenLinear


class StrategyModule(MitogenLinear):
    def run(self, iterator, play_context):  # type: ignore[no-untyped-def]
        if iterator._play.connection in ("local", "ansible.builtin.local"):
            return LinearStrategy.run(self, iterator, play_context)
        return super().run(iterator, play_context)
