"""`gpuprov schedule`: the timer and service it writes are valid systemd units (systemd-analyze
verify), and the service's command, run exactly as written in the unit, produces the report and the
metrics that the drift alerts read. (This machine runs no systemd: the timer enabled and its service
run by systemd are tests/test_schedule_systemd.py's, in a systemd container.)"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import GPUPROV, ROOT


def _gpuprov(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GPUPROV), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_the_schedule_installs_valid_units_whose_command_reports_drift_and_metrics(tmp_path):
    inv = tmp_path / "fleet" / "hosts.yml"
    inv.parent.mkdir()
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"ctl": {"ansible_connection": "local",
                                                              "ansible_python_interpreter": sys.executable}}}}))
    play = tmp_path / "site.yml"
    play.write_text(yaml.safe_dump([{"name": "Something to drift", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Write a file", "ansible.builtin.copy": {"dest": str(tmp_path / "f"), "content": "x\n",
                                                          "mode": "0644"}}]}]))
    units, metrics = tmp_path / "units", tmp_path / "textfile" / "drift.prom"
    args = ["-i", str(inv), "--unit-dir", str(units), "--playbook", str(play), "--metrics-file", str(metrics),
            "--on-calendar", "*:0/30"]
    first = _gpuprov("schedule", "install", *args)
    assert first.returncode == 0, first.stderr
    assert "units written, not enabled" in first.stdout
    service, timer = sorted(units.glob("gpuprov-drift-*.service")), sorted(units.glob("gpuprov-drift-*.timer"))
    assert len(service) == len(timer) == 1
    assert "OnCalendar=*:0/30" in timer[0].read_text() and "Persistent=true" in timer[0].read_text()
    before = {p.name: p.stat().st_mtime_ns for p in units.iterdir()}
    assert _gpuprov("schedule", "install", *args).returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in units.iterdir()} == before, "a second install rewrote the units"

    verify = subprocess.run(["systemd-analyze", "verify", str(service[0]), str(timer[0])], capture_output=True,
                            text=True, check=False, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})
    assert verify.returncode == 0, verify.stderr

    # The service's command as systemd would run it (ExecStart, WorkingDirectory, Environment).
    unit = dict(ln.split("=", 1) for ln in service[0].read_text().splitlines() if "=" in ln and not ln.startswith("#"))
    run = subprocess.run(shlex.split(unit["ExecStart"].replace("%%", "%")), cwd=unit["WorkingDirectory"],
                         capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, unit["Environment"].split("=", 1)[0]: unit["Environment"].split("=", 1)[1]})
    assert run.returncode == 2, run.stderr[-2000:]  # the file is not there yet: drift, a successful run
    assert "SuccessExitStatus=2" in service[0].read_text()
    last = Path(shlex.split(unit["ExecStart"])[shlex.split(unit["ExecStart"]).index("-o") + 1])
    assert [h["status"] for h in json.loads(last.read_text())["hosts"]] == ["drifted"]
    assert "gpuprov_drift_last_run_timestamp_seconds{" in metrics.read_text()
    assert 'gpuprov_drift_tasks{inventory="fleet-' in metrics.read_text()

    bad = _gpuprov("schedule", "install", "-i", str(inv), "--unit-dir", str(units), "--on-calendar", "every tuesday")
    assert bad.returncode == 64 and "--on-calendar 'every tuesday'" in bad.stderr
    removed = _gpuprov("schedule", "remove", "-i", str(inv), "--unit-dir", str(units))
    assert removed.returncode == 0 and not list(units.iterdir())
