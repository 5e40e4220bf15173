"""Run artifacts: summary.json is written, and secrets never land in .gpuprov/runs/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from conftest import write_local_inventory

from gpuprov.runner import RunRequest, run

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Hf-T0ken-7f1c2a"


def test_no_secret_in_artifacts(tmp_path, monkeypatch):
    # A token in the caller's environment must not be recorded either.
    monkeypatch.setenv("HF_TOKEN", SECRET)
    playbook = tmp_path / "secret.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Use a secret",
        "hosts": "all",
        "gather_facts": False,
        "tasks": [
            {"name": "Write the token", "no_log": True,
             "ansible.builtin.copy": {"content": "{{ hf_token }}", "dest": str(tmp_path / "token"),
                                      "mode": "0600"}},
            {"name": "Fail with the token in a no_log task", "no_log": True,
             "ansible.builtin.command": "false {{ hf_token }}", "ignore_errors": True,
             "changed_when": False},
        ],
    }]))
    vault_like = tmp_path / "secrets.yml"
    vault_like.write_text(yaml.safe_dump({"other_secret": SECRET + "-file"}))
    inv = write_local_inventory(tmp_path / "hosts.yml")
    result = run(
        RunRequest(
            command="test-secrets",
            playbook=str(playbook),
            inventories=[str(inv)],
            extra_vars=[f"hf_token={SECRET}", f"@{vault_like}"],
        ),
    )
    assert result.rc == 0, result.run_dir
    assert (tmp_path / "token").read_text() == SECRET  # the secret was really used
    leaked = [
        str(p) for p in result.run_dir.rglob("*")
        if p.is_file() and SECRET in p.read_text(errors="replace")
    ]
    assert leaked == []
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["rc"] == 0
    assert summary["extra_vars_files"] == [f"@{vault_like}"]
    assert summary["hosts"]["localhost"]["changed"] == 1


def test_run_dir_layout(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml")
    result = run(RunRequest(command="test-layout", module="ansible.builtin.ping",
                            host_pattern="localhost", inventories=[str(inv)]))
    assert result.rc == 0
    assert [r.host for r in result.recaps] == ["localhost"]
    rel = result.run_dir.relative_to(ROOT / ".gpuprov" / "runs")
    assert rel.name.endswith("-test-layout")
    assert (result.run_dir / "summary.json").exists()
    assert (result.run_dir / "artifacts" / "run" / "job_events").is_dir()
    assert not (result.run_dir / "env" / "extravars").exists()
    assert os.stat(result.run_dir / "artifacts" / "run" / "command").st_mode & 0o077 == 0


def test_a_change_hidden_by_no_log_is_still_drift(tmp_path):
    """no_log censors a task's result, `changed` included; the drift list must still name it."""
    inv = write_local_inventory(tmp_path / "hosts.yml")
    (tmp_path / "token").write_text("old")
    playbook = tmp_path / "hidden.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Hidden changes", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "Write the token", "no_log": True,
             "ansible.builtin.copy": {"content": "{{ hf_token }}", "dest": str(tmp_path / "token"), "mode": "0600"}},
            {"name": "Read nothing secret", "no_log": True, "ansible.builtin.command": "true",
             "changed_when": False},
            {"name": "Loop over secrets", "no_log": True, "loop": [1, 2],
             "ansible.builtin.copy": {"content": "{{ hf_token }}{{ item }}", "dest": str(tmp_path) + "/t{{ item }}",
                                      "mode": "0600"}},
        ],
    }]))
    check = run(RunRequest(command="test-hidden", playbook=str(playbook), inventories=[str(inv)],
                           extra_vars=[f"hf_token={SECRET}"], check=True, diff=True))
    assert check.rc == 0 and check.recaps[0].changed == 2
    # Both hidden tasks that ran changed (the command is skipped in check mode): each is named.
    assert [c.label() for c in check.tracker.changes] == ["Write the token", "Loop over secrets"]
    assert (tmp_path / "token").read_text() == "old"
    # Applied, then one hidden task changes: it is named.
    run(RunRequest(command="test-hidden", playbook=str(playbook), inventories=[str(inv)],
                   extra_vars=[f"hf_token={SECRET}"]))
    (tmp_path / "t1").write_text("drifted")
    again = run(RunRequest(command="test-hidden", playbook=str(playbook), inventories=[str(inv)],
                           extra_vars=[f"hf_token={SECRET}"], check=True, diff=True))
    # One change among two hidden tasks: which one cannot be told, so both are named as candidates.
    assert [c.label() for c in again.tracker.changes] == [
        "1 of these (output hidden by no_log): Write the token, Loop over secrets"]
    assert all(SECRET not in c.label() for c in again.tracker.changes)


def test_run_directories_are_rotated(tmp_path, monkeypatch):
    """The newest GPUPROV_KEEP_RUNS run directories stay (the README states the retention); older ones,
    artifacts and all, go when a new run starts."""
    from datetime import UTC, datetime

    from gpuprov import paths

    monkeypatch.setenv("GPUPROV_ROOT", str(tmp_path))
    monkeypatch.setenv("GPUPROV_KEEP_RUNS", "3")
    runs = tmp_path / ".gpuprov" / "runs"
    for day in range(1, 6):
        (runs / f"2026110{day}T000000.000000Z-apply" / "artifacts").mkdir(parents=True)
    new = paths.new_run_dir("check", now=datetime(2026, 12, 3, tzinfo=UTC))
    assert sorted(p.name for p in runs.iterdir()) == [
        "20261104T000000.000000Z-apply", "20261105T000000.000000Z-apply", new.name]
    assert paths.KEEP_RUNS == 200
