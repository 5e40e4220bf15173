"""What every run gets from gpuprov's runner, read back from inside a real ansible-playbook run."""

from __future__ import annotations

import json

import yaml
from conftest import write_local_inventory

from gpuprov import paths
from gpuprov.runner import RunRequest, run, strategy_for


def _config_seen_by_a_run(tmp_path, name: str) -> str:
    out = tmp_path / "seen"
    playbook = tmp_path / "config.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Read a setting", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Write what the run sees",
                   "ansible.builtin.copy": {"content": f"{{{{ lookup('ansible.builtin.config', '{name}') }}}}",
                                            "dest": str(out), "mode": "0644"}}],
    }]))
    inv = write_local_inventory(tmp_path / "hosts.yml")
    result = run(RunRequest(command="test-env", playbook=str(playbook), inventories=[str(inv)]))
    assert result.rc == 0, result.run_dir
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["strategy"] == strategy_for([str(inv)])
    return out.read_text()


def test_host_keys_are_checked_on_every_run(tmp_path, monkeypatch):
    """ansible-runner would set ANSIBLE_HOST_KEY_CHECKING=False when the caller leaves it unset."""
    monkeypatch.delenv("ANSIBLE_HOST_KEY_CHECKING", raising=False)
    assert _config_seen_by_a_run(tmp_path, "HOST_KEY_CHECKING") == "True"


def test_a_callers_choice_of_host_key_checking_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("ANSIBLE_HOST_KEY_CHECKING", "False")
    assert _config_seen_by_a_run(tmp_path, "HOST_KEY_CHECKING") == "False"


def test_other_inventories_keep_ansibles_own_strategy_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    assert _config_seen_by_a_run(tmp_path, "DEFAULT_STRATEGY") == "linear"
    monkeypatch.setenv("ANSIBLE_STRATEGY", "mitogen_linear")
    assert strategy_for([str(tmp_path / "hosts.yml")]) == "mitogen_linear"


def test_the_lab_opts_in_to_mitogen(monkeypatch):
    """Measured on the lab (tests/test_cli_lab.py asserts its runs use it)."""
    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    lab = paths.lab_inventory_dir()
    assert strategy_for([]) == strategy_for([str(lab)]) == strategy_for([str(lab / "hosts.yml")]) == "mitogen_linear"
    assert strategy_for([str(lab), "/elsewhere/hosts.yml"]) == "linear"
    monkeypatch.setenv("ANSIBLE_INVENTORY", "/elsewhere/hosts.yml")  # no -i, but not ansible.cfg's lab
    assert strategy_for([]) == "linear"
