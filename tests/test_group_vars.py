"""The repository's top-level group_vars/ apply to every playbook in playbooks/.

Ansible reads group_vars beside the inventory and beside the playbook, never at the repo root;
playbooks/group_vars links to ../group_vars. This runs a real playbook from playbooks/ through
gpuprov's runner against localhost and checks which values the host really got.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import write_local_inventory

from gpuprov.runner import RunRequest, run

ROOT = Path(__file__).resolve().parent.parent

PLAYBOOK = [
    {
        "name": "Report variables",
        "hosts": "gpu_servers",
        "gather_facts": False,
        "tasks": [
            {
                "name": "Report",
                "ansible.builtin.debug": {
                    "msg": "{{ {'group': base_service_group, 'swappiness': base_swappiness} | to_json }}"
                },
            }
        ],
    }
]


@pytest.fixture
def playbook_in_playbooks_dir():
    path = ROOT / "playbooks" / f".pytest-group-vars-{os.getpid()}.yml"
    path.write_text(yaml.safe_dump(PLAYBOOK))
    yield path
    path.unlink()


def _inventory(tmp_path: Path, group_vars: dict[str, dict]) -> Path:
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    write_local_inventory(inv / "hosts.yml", group="gpu_servers")
    for group, values in group_vars.items():
        (inv / "group_vars" / f"{group}.yml").write_text(yaml.safe_dump(values))
    return inv


def _reported(playbook: Path, inv: Path) -> dict:
    events: list[dict] = []
    result = run(
        RunRequest(command="test-group-vars", playbook=str(playbook), inventories=[str(inv)]),
        on_event=lambda _t, e: events.append(e),
    )
    assert result.rc == 0, result.run_dir
    msgs = [
        e["event_data"]["res"]["msg"]
        for e in events
        if e.get("event") == "runner_on_ok" and e["event_data"].get("task") == "Report"
    ]
    assert len(msgs) == 1
    return json.loads(msgs[0])


def test_link_points_at_top_level_group_vars():
    link = ROOT / "playbooks" / "group_vars"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "group_vars").resolve()


def test_top_level_group_vars_apply(playbook_in_playbooks_dir, tmp_path):
    top = yaml.safe_load((ROOT / "group_vars" / "all" / "gpuprov.yml").read_text())
    got = _reported(playbook_in_playbooks_dir, _inventory(tmp_path, {}))
    assert got == {"group": top["base_service_group"], "swappiness": top["base_swappiness"]}
    # The value comes from group_vars, not from the role default (which is a different number).
    assert top["base_swappiness"] == 10


def test_inventory_group_overrides_top_level_all(playbook_in_playbooks_dir, tmp_path):
    inv = _inventory(tmp_path, {"gpu_servers": {"base_swappiness": 33}})
    got = _reported(playbook_in_playbooks_dir, inv)
    assert got["swappiness"] == 33
    assert got["group"] == "gpuprov"
