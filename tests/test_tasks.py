"""The task count behind `[done/total]` comes from a real --list-tasks run."""

from __future__ import annotations

from conftest import write_local_inventory

from gpuprov.runner import RunRequest
from gpuprov.tasks import task_total


def test_total_with_json_extra_vars(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml", group="gpu_servers")
    plain = task_total(RunRequest(command="t", playbook="playbooks/site.yml"), [str(inv)])
    # An -e value with spaces must reach ansible-playbook as one argument.
    with_json = task_total(
        RunRequest(command="t", playbook="playbooks/site.yml", extra_vars=['{"base_swappiness": 20}']),
        [str(inv)],
    )
    assert plain is not None and plain > 10
    assert with_json == plain
