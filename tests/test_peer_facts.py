"""_common's peer_facts, run by real ansible-playbook processes on local hosts: the facts of a group's
hosts outside --limit are gathered for the run, and a host whose facts cannot be had fails the run
before anything changes, by name (the firewall and Prometheus build their configuration this way)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from conftest import first_failure

from gpuprov.runner import RunRequest, run

LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
# A host that refuses every connection (nothing listens on port 9 of this machine's loopback).
DOWN = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
        "ansible_ssh_common_args": "-o ConnectTimeout=5"}


def _run(tmp_path: Path, monitoring: dict) -> tuple[int, Path, list[dict]]:
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {
        "gpu_servers": {"hosts": {"g1": LOCAL}},
        "monitoring": {"hosts": monitoring},
    }}}))
    changed = tmp_path / "changed"
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Configure from the monitoring hosts' addresses", "hosts": "gpu_servers", "gather_facts": False,
        "tasks": [
            {"name": "Know the monitoring hosts' addresses", "ansible.builtin.include_role": {
                "name": "_common", "tasks_from": "peer_facts"},
             "vars": {"_common_peer_group": "monitoring", "_common_peer_facts": ["ansible_facts.default_ipv4.address"],
                      "_common_peer_purpose": "The test's firewall"}},
            {"name": "Write the configuration", "ansible.builtin.copy": {
                "content": "{{ groups['monitoring']"
                           " | map('extract', hostvars, ['ansible_facts', 'default_ipv4', 'address']) | join(' ') }}",
                "dest": str(changed), "mode": "0644"}},
        ],
    }]))
    events: list[dict] = []
    result = run(RunRequest(command="test-peer-facts", playbook=str(play), inventories=[str(inv)], limit="g1"),
                 on_event=lambda _t, e: events.append(e))
    return result.rc, changed, events


def test_facts_of_hosts_outside_the_limit_are_gathered_for_the_run(tmp_path):
    rc, changed, _ = _run(tmp_path, {"m1": LOCAL, "m2": LOCAL})
    assert rc == 0
    addresses = changed.read_text().split()
    assert len(addresses) == 2 and all(a.count(".") == 3 for a in addresses), addresses


def test_a_host_whose_facts_cannot_be_had_fails_the_run_by_name_before_any_change(tmp_path):
    rc, changed, events = _run(tmp_path, {"m1": LOCAL, "m2": DOWN})
    assert rc != 0
    task, msg = first_failure(events)
    assert task == "Check the needed facts are known of every host in monitoring"
    assert "these hosts lack them: m2." in msg and "ansible_facts.default_ipv4.address" in msg
    assert "Nothing was changed" in msg
    assert not changed.exists(), "the configuration was written without a monitoring host"
