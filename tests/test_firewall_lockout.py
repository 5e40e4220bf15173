"""The firewall role refuses, before anything changes, a configuration that would lock
administrators out: its preflight run by real ansible-playbook processes (the assert needs no
connection: the hosts here are a local one and SSH hosts that nothing answers for)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from gpuprov.runner import RunRequest, run

TASK = "Check SSH stays open to the administrators"
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
SSH = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
       "ansible_python_interpreter": "/usr/bin/python3"}


def _preflight(tmp_path: Path, host: dict, **extra) -> tuple[str, str]:
    """(status, message) of the lock-out check: ok or failed."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"gpu_servers": {"hosts": {"h1": host}}}}}))
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{"name": "Preflight", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Run the firewall preflight",
         "ansible.builtin.include_role": {"name": "firewall", "tasks_from": "preflight"}}]}]))
    events: list[dict] = []
    run(RunRequest(command="test-firewall", playbook=str(play), inventories=[str(inv)],
                   extra_vars=[json.dumps(extra)] if extra else []), on_event=lambda _t, e: events.append(e))
    for e in events:
        data = e.get("event_data") or {}
        if data.get("task") == TASK and e["event"] in ("runner_on_ok", "runner_on_failed"):
            return ("ok" if e["event"] == "runner_on_ok" else "failed"), data["res"].get("msg", "")
    raise AssertionError(f"{TASK} did not run")


@pytest.mark.parametrize("host, extra, words", [
    (LOCAL, {}, "managed with a local connection"),
    (SSH, {}, "managed over SSH on port 9"),
    (SSH, {"firewall_admin_cidrs": ["198.51.100.0/24"], "firewall_ssh_port": 22}, "(is 22)"),
], ids=["local-without-admin-cidrs", "ssh-without-admin-cidrs", "ssh-port-not-the-connections"])
def test_a_configuration_that_locks_administrators_out_is_refused(tmp_path, host, extra, words):
    status, msg = _preflight(tmp_path, host, **extra)
    assert status == "failed" and words in msg and "Nothing was changed" in msg, msg


def test_the_ssh_port_follows_the_connection_and_admin_cidrs_let_it_through(tmp_path):
    assert _preflight(tmp_path, SSH, firewall_admin_cidrs=["198.51.100.0/24"])[0] == "ok"
    assert _preflight(tmp_path, LOCAL, firewall_admin_cidrs=["198.51.100.0/24"])[0] == "ok"
