"""`gpuprov verify` through scripts/gpuprov over real ansible-runner runs on localhost: every check
appears with its result and finding, a failed check or a broken probe means exit 1, a check that
does not apply is shown as such, and a run in which no check ran never passes. (The lab test runs
the real playbooks/verify.yml against a provisioned host.)"""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import run_gpuprov, verify_rows, write_local_inventory


def _playbook(path: Path, tasks: list[dict]) -> Path:
    path.write_text(yaml.safe_dump([{"name": "Checks", "hosts": "gpu_servers", "gather_facts": False,
                                     "tasks": tasks}]))
    return path


def _assert(name: str, that: str, ok: str, bad: str, **extra) -> dict:
    return {"name": name, "ansible.builtin.assert": {"that": that, "success_msg": ok, "fail_msg": bad},
            "register": "__r_" + str(abs(hash(name)) % 10_000), "ignore_errors": True, **extra}


def _rows(stdout: str) -> dict[str, tuple[str, str]]:
    """{check: (result, found)} of localhost."""
    return {check: value for (host, check), value in verify_rows(stdout).items() if host == "localhost"}


def test_each_check_is_reported_and_a_failed_one_fails_the_run(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml", group="gpu_servers")
    book = _playbook(tmp_path / "verify.yml", [
        _assert("Disk: root mounted", "'/' in ['/']", "root is mounted", "root is missing"),
        _assert("Service: answers", "1 == 2", "it answers", "HTTP 502 from 127.0.0.1:8000"),
        _assert("GPU: nvidia-smi sees every GPU", "true", "x", "y", when="false"),
    ])
    out = run_gpuprov("verify", "-i", str(inv), "--playbook", str(book), timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    rows = _rows(out.stdout)
    assert rows["Disk: root mounted"] == ("pass", "root is mounted")
    assert rows["Service: answers"] == ("FAIL", "HTTP 502 from 127.0.0.1:8000")
    assert rows["GPU: nvidia-smi sees every GPU"][0] == "skip"
    assert rows["GPU: nvidia-smi sees every GPU"][1] == "not applicable on this host"
    assert "1 passed, 1 failed, 1 not applicable" in out.stdout


def test_all_checks_passing_exits_zero(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml", group="gpu_servers")
    book = _playbook(tmp_path / "verify.yml", [
        _assert("Disk: root mounted", "'/' in ['/']", "root is mounted", "root is missing"),
    ])
    out = run_gpuprov("verify", "-i", str(inv), "--playbook", str(book), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 0 failed, 0 not applicable" in out.stdout


def test_a_broken_probe_is_a_failure_not_a_silent_pass(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml", group="gpu_servers")
    book = _playbook(tmp_path / "verify.yml", [
        {"name": "Read a file that is not there", "ansible.builtin.command": "cat /nonexistent/gpuprov-probe",
         "changed_when": False},
        _assert("File: readable", "true", "readable", "unreadable"),
    ])
    out = run_gpuprov("verify", "-i", str(inv), "--playbook", str(book), timeout=300)
    assert out.returncode == 1, out.stdout
    assert _rows(out.stdout)["task: Read a file that is not there"][0] == "FAIL"


def test_no_check_ran_is_a_failure(tmp_path):
    # The inventory has no gpu_servers: the playbook matches no host and checks nothing.
    inv = write_local_inventory(tmp_path / "hosts.yml", group="monitoring")
    book = _playbook(tmp_path / "verify.yml", [_assert("Disk: root mounted", "true", "ok", "bad")])
    out = run_gpuprov("verify", "-i", str(inv), "--playbook", str(book), timeout=300)
    assert out.returncode == 1
    assert "no check ran" in out.stderr


def test_a_playbook_that_does_not_parse_is_a_clear_failure(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml", group="gpu_servers")
    book = tmp_path / "verify.yml"
    book.write_text("- name: Broken\n  hosts: gpu_servers\n  tasks:\n    - ansible.builtin.assert: {that: [true]\n")
    out = run_gpuprov("verify", "-i", str(inv), "--playbook", str(book), timeout=300)
    assert out.returncode == 1
    assert "gpuprov: ansible-playbook exited" in out.stderr and "artifacts/run/stdout" in out.stderr
