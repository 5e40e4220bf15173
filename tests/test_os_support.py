"""Roles with per-distribution variables refuse an unsupported distribution with their own message
before loading any file (it used to die on a missing vars file), and load the most specific file
there is for a supported one: the preflights of base and nvidia_driver run by real ansible-playbook
processes on this host, with the distribution's facts given as variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_local_inventory

from gpuprov.runner import RunRequest, run

FEDORA = {"ansible_facts": {"distribution": "Fedora", "distribution_major_version": "41",
                           "distribution_version": "41", "os_family": "RedHat"}}
DEBIAN = {"ansible_facts": {"distribution": "Debian", "distribution_major_version": "12",
                           "distribution_version": "12.8", "os_family": "Debian",
                           "distribution_release": "bookworm"}}


def _preflight(tmp_path: Path, role: str, facts: dict, probe: str) -> tuple[int, list[dict]]:
    play = [{"name": "Preflight", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Run the preflight",
         "ansible.builtin.include_role": {"name": role, "tasks_from": "preflight", "public": True}},
        {"name": "Say what was loaded", "ansible.builtin.debug": {"msg": "{{ " + probe + " | default('none') }}"}},
    ]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    write_local_inventory(tmp_path / "hosts.yml")
    events: list[dict] = []
    result = run(RunRequest(command="test-os-support", playbook=str(tmp_path / "play.yml"),
                            inventories=[str(tmp_path / "hosts.yml")], extra_vars=[json.dumps(facts)]),
                 on_event=lambda _t, e: events.append(e))
    return result.rc, events


@pytest.mark.parametrize("role, probe, words", [
    ("base", "__base_apt_sources_file", "base supports"),
    ("nvidia_driver", "__nvidia_driver_distro_branch", "nvidia_driver supports Debian, Ubuntu"),
])
def test_an_unsupported_distribution_gets_the_roles_message_not_a_missing_file(tmp_path, role, probe, words):
    _, events = _preflight(tmp_path, role, FEDORA, probe)
    task, msg = [(e["event_data"]["task"], e["event_data"]["res"].get("msg", "")) for e in events
                 if e.get("event") == "runner_on_failed"][0]
    assert task == "Check the distribution is supported", (task, msg)
    assert words in msg and "Fedora 41" in msg


@pytest.mark.parametrize("role, probe, value", [
    ("base", "__base_apt_sources_file", "/etc/apt/sources.list.d/debian.sources"),
    ("nvidia_driver", "__nvidia_driver_distro_branch", None),
])
def test_a_supported_distribution_loads_its_variables(tmp_path, role, probe, value):
    rc, events = _preflight(tmp_path, role, DEBIAN, probe)
    assert rc == 0, [e["event_data"].get("res", {}).get("msg") for e in events if e.get("event") == "runner_on_failed"]
    said = [e["event_data"]["res"]["msg"] for e in events if e.get("event") == "runner_on_ok"
            and e["event_data"].get("task") == "Say what was loaded"]
    assert said and said[0] != "none"
    if value:
        assert said[0] == value
