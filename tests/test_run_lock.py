"""One run at a time per inventory, and Ctrl-C: real `gpuprov apply` processes on a local inventory
(localhost, local connection) running a playbook that waits where the test wants it to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml
from conftest import GPUPROV, ROOT, write_local_inventory


def _playbook(tmp_path: Path, name: str = "slow.yml") -> Path:
    """Writes `started`, waits for `release` (at most 60 s), then writes `finished`."""
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump([{
        "name": "A run that waits", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "Say it started", "ansible.builtin.file": {"path": str(marks / "started"), "state": "touch",
                                                                 "mode": "0644"}},
            {"name": "Wait to be released", "ansible.builtin.wait_for": {"path": str(marks / "release"),
                                                                        "timeout": 600}},
            {"name": "Say it finished", "ansible.builtin.file": {"path": str(marks / "finished"), "state": "touch",
                                                                  "mode": "0644"}},
        ],
    }]))
    return path


def _start(inventory: Path, playbook: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(GPUPROV), "apply", "-i", str(inventory), "--playbook", str(playbook), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})


def _wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_a_second_run_on_one_inventory_is_refused_naming_the_first_and_another_inventory_is_not(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml")
    other = tmp_path / "other"
    other.mkdir()
    other_inv = write_local_inventory(other / "hosts.yml")
    marks = tmp_path / "marks"
    first = _start(inv, _playbook(tmp_path))
    try:
        _wait_for(marks / "started")
        second = subprocess.run([str(GPUPROV), "apply", "-i", str(inv), "--playbook",
                                 str(_playbook(tmp_path, "b.yml"))],
                                cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 75, second.stderr
        assert f"pid {first.pid}" in second.stderr and "gpuprov apply" in second.stderr, second.stderr
        assert "--wait-lock" in second.stderr
        # Another inventory has a lock of its own.
        quick = other / "quick.yml"
        quick.write_text(yaml.safe_dump([{"name": "Quick", "hosts": "all", "gather_facts": False,
                                           "tasks": [{"name": "Nothing", "ansible.builtin.meta": "noop"}]}]))
        third = subprocess.run([str(GPUPROV), "apply", "-i", str(other_inv), "--playbook", str(quick)],
                               cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert third.returncode == 0, third.stdout + third.stderr
        # One that waits gets its turn when the first ends.
        waiting = _start(inv, quick, "--wait-lock", "120")
        time.sleep(2)
        assert waiting.poll() is None, "it did not wait for the lock"
        (marks / "release").touch()
        assert first.wait(timeout=300) == 0
        out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, out + err
    finally:
        (marks / "release").touch()
        first.kill() if first.poll() is None else None


def test_ctrl_c_stops_the_run_cleanly_says_interrupted_and_frees_the_lock(tmp_path):
    inv = write_local_inventory(tmp_path / "hosts.yml")
    marks = tmp_path / "marks"
    run = _start(inv, _playbook(tmp_path))
    try:
        _wait_for(marks / "started")
        time.sleep(1)
        run.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground process
        out, err = run.communicate(timeout=120)
    finally:
        (marks / "release").touch()
        run.kill() if run.poll() is None else None
    assert run.returncode == 130, out + err
    assert "gpuprov: interrupted (SIGINT)" in err
    assert "Traceback" not in err
    assert not (marks / "finished").exists(), "the run went on after the interrupt"
    # The run ended as runs end: its summary says so, and Ansible's own output has its interrupt.
    artifacts = Path([ln for ln in out.splitlines() if ln.startswith("artifacts: ")][-1].split(": ", 1)[1])
    summary = json.loads((artifacts / "summary.json").read_text())
    assert summary["interrupted"] == "SIGINT"
    assert "User interrupted execution" in (artifacts / "artifacts" / "run" / "stdout").read_text()
    # The lock went with it.
    again = subprocess.run([str(GPUPROV), "apply", "-i", str(inv), "--playbook", str(_playbook(tmp_path, "c.yml"))],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (marks / "finished").exists()
