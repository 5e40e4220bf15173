"""What every run gets from gpuprov's runner, read back from inside a real ansible-playbook run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    # Nor does it share the lab's lock and fact cache.
    assert paths.inventory_key([]) == paths.inventory_key(["/elsewhere/hosts.yml"]) != "lab"


def test_facts_outlive_the_run_in_a_cache_of_the_inventorys_own(tmp_path):
    """ansible-runner would keep the fact cache in each run's artifacts: a run with --limit would
    never know the facts that an earlier run gathered for the hosts outside the limit."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"one": local, "two": local}}}))
    gather = tmp_path / "gather.yml"
    gather.write_text(yaml.safe_dump([{"name": "Gather", "hosts": "all", "gather_facts": True, "tasks": []}]))
    first = run(RunRequest(command="test-facts", playbook=str(gather), inventories=[str(inv)]))
    assert first.rc == 0, first.run_dir
    cache = paths.fact_cache_dir([str(inv)])
    assert cache.parent == paths.state_dir() / "facts"
    # ansible-core's jsonfile cache names a host's file after it (behind a schema prefix, s1_).
    assert any(p.name.endswith("two") for p in cache.iterdir()), list(cache.iterdir())
    assert not any(first.run_dir.rglob("fact_cache/*")), "facts kept in the run's artifacts"

    out = tmp_path / "seen"
    read = tmp_path / "read.yml"
    read.write_text(yaml.safe_dump([{
        "name": "Read another host's facts", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Write the other host's machine id",
                   "ansible.builtin.copy": {"content": "{{ hostvars['two'].ansible_facts.machine_id | default('') }}",
                                            "dest": str(out), "mode": "0644"}}],
    }]))
    second = run(RunRequest(command="test-facts", playbook=str(read), inventories=[str(inv)], limit="one"))
    assert second.rc == 0, second.run_dir
    assert out.read_text() == Path("/etc/machine-id").read_text().strip()
    other = tmp_path / "elsewhere" / "hosts.yml"
    other.parent.mkdir()
    other.write_text(inv.read_text())
    assert paths.fact_cache_dir([str(other)]) != cache, "two inventories share one fact cache"
