"""An inventory's group_vars decide, all.yml included: nothing beside the playbooks outranks them.

Ansible ranks a playbook directory's group_vars/all above an inventory's group_vars/all, so a
project-wide group_vars/ linked beside playbooks/ made a site's group_vars/all.yml lose without a
word. The project's policy lives in the roles' defaults only. This runs a real playbook from
playbooks/ through gpuprov's runner against localhost and checks which values the host really got.
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
                    "msg": "{{ {'group': base_service_group | default('unset'),"
                    " 'swappiness': base_swappiness | default('unset')} | to_json }}"
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


def test_no_group_vars_beside_the_playbooks():
    assert not (ROOT / "playbooks" / "group_vars").exists()
    assert not (ROOT / "playbooks" / "host_vars").exists()


def test_an_inventorys_all_yml_reaches_the_play(playbook_in_playbooks_dir, tmp_path):
    inv = _inventory(tmp_path, {"all": {"base_swappiness": 33, "base_service_group": "site"}})
    assert _reported(playbook_in_playbooks_dir, inv) == {"group": "site", "swappiness": 33}


def test_an_inventorys_group_file_reaches_the_play(playbook_in_playbooks_dir, tmp_path):
    inv = _inventory(tmp_path, {"all": {"base_swappiness": 5}, "gpu_servers": {"base_swappiness": 33}})
    assert _reported(playbook_in_playbooks_dir, inv) == {"group": "unset", "swappiness": 33}
