"""The gpu fact on a host with no NVIDIA device: installed, valid JSON, says so."""

import json

from gpuprov_molecule import assert_no_changes_in_check_mode


def test_fact_script_installed(host):
    f = host.file("/etc/ansible/facts.d/gpu.fact")
    assert f.exists and f.user == "root" and f.mode == 0o755


def test_fact_is_valid_json_with_no_gpu(host):
    out = host.run("/etc/ansible/facts.d/gpu.fact")
    assert out.rc == 0
    fact = json.loads(out.stdout)
    assert fact["schema"] == 1
    assert fact["status"] == "no_gpu"
    assert fact["gpu_count"] == 0 and fact["gpus"] == [] and fact["pci_devices"] == []
    assert fact["nvswitch_count"] == 0 and fact["fabric_manager_needed"] is False
    assert fact["message"] == "no NVIDIA device on the PCI bus"


def test_ansible_sees_the_fact(host):
    local = host.ansible("setup", "filter=ansible_local", check=False)["ansible_facts"]["ansible_local"]
    assert local["gpu"]["status"] == "no_gpu"


def test_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()
