"""The lab's inventory and known_hosts (`gpuprov lab up` writes them): each host at its own address,
reached over SSH with the lab's key and its host key checked against the lab's own known_hosts."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from gpuprov import lab, paths

ROOT = Path(__file__).resolve().parents[1]


def test_each_host_is_reached_at_its_address_with_the_labs_key_and_known_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUPROV_ROOT", str(tmp_path))
    hosts = lab.default_hosts("debian12", 2)
    addresses = {"gpuprov-lab-gpu1": "172.30.0.2", "gpuprov-lab-gpu2": "172.30.0.3", "gpuprov-lab-mon1": "172.30.0.4"}
    inv = lab.inventory_for(hosts, "172.30.0.0/16", "172.30.0.1", addresses)
    gpus = inv["all"]["children"]["gpu_servers"]["hosts"]
    assert gpus["gpuprov-lab-gpu2"] == {"gpuprov_lab_os": "debian12", "ansible_host": "172.30.0.3"}
    assert inv["all"]["children"]["monitoring"]["hosts"]["gpuprov-lab-mon1"]["ansible_host"] == "172.30.0.4"
    lab_vars = inv["all"]["vars"]
    assert lab_vars["ansible_ssh_private_key_file"] == str(tmp_path / ".gpuprov" / "lab-ssh" / "id_ed25519")
    # Longer than Ansible's 10 s: the lab's hosts share the controller's processors.
    assert lab_vars["ansible_ssh_timeout"] == lab.LAB_SSH_TIMEOUT_S == 60
    args = shlex.split(lab_vars["ansible_ssh_common_args"])
    assert args == ["-o", f"UserKnownHostsFile={tmp_path / '.gpuprov' / 'lab-ssh' / 'known_hosts'}",
                    "-o", "StrictHostKeyChecking=yes"]
    # Nothing in the lab's own variables turns host key checking off (ansible.cfg turns it on).
    group_vars = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text())
    assert group_vars["ansible_connection"] == "ssh" and "ansible_host_key_checking" not in group_vars
    assert "StrictHostKeyChecking=no" not in yaml.safe_dump(inv)


def test_known_hosts_is_replaced_whole(tmp_path, monkeypatch):
    """An address Docker hands to another container later must not keep the old host's key."""
    monkeypatch.setenv("GPUPROV_ROOT", str(tmp_path))
    path = lab.write_known_hosts({"172.30.0.2": "ssh-ed25519 AAAAold", "172.30.0.3": "ssh-ed25519 AAAAkept"})
    assert path == paths.state_dir() / "lab-ssh" / "known_hosts"
    lab.write_known_hosts({"172.30.0.3": "ssh-ed25519 AAAAkept"})
    assert path.read_text() == "172.30.0.3 ssh-ed25519 AAAAkept\n"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                    reason="needs OpenSSH's ssh-keygen (openssh-client), which scripts/test installs with Docker")
def test_the_labs_key_is_made_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUPROV_ROOT", str(tmp_path))
    key = lab.ensure_key()
    first = key.with_suffix(".pub").read_text()
    assert first.startswith("ssh-ed25519 ") and oct(key.stat().st_mode & 0o777) == "0o600"
    assert lab.ensure_key() == key and key.with_suffix(".pub").read_text() == first
