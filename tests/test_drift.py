"""`gpuprov drift` for real: scripts/gpuprov over a local inventory (hosts on a local connection, one
that refuses connections), a playbook that writes a file per host, a hand edit on one host."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import yaml
from conftest import GPUPROV, ROOT

LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
DOWN = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
        "ansible_ssh_common_args": "-o ConnectTimeout=5"}
SECRET = "s3cr3t-do-not-show"


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    files = tmp_path / "files"
    files.mkdir()
    inv = tmp_path / "fleet" / "hosts.yml"
    inv.parent.mkdir()
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"web-a": LOCAL, "web-b": LOCAL, "web-c": DOWN}}}))
    play = tmp_path / "site.yml"
    play.write_text(yaml.safe_dump([{
        "name": "A file per host", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "Write the host's settings", "ansible.builtin.copy": {
                "dest": f"{files}/{{{{ inventory_hostname }}}}.conf", "mode": "0644",
                "content": f"name = {{{{ inventory_hostname }}}}\nworkers = 4\napi_key = {SECRET}\n"}},
        ],
    }]))
    return inv, play, files


def _gpuprov(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GPUPROV), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_drift_reports_each_host_with_its_diffs_in_every_format_and_since_when(tmp_path):
    inv, play, files = _setup(tmp_path)
    applied = _gpuprov("apply", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play))
    assert applied.returncode == 0, applied.stdout[-2000:]
    clean = _gpuprov("drift", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play), "--format", "json")
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert {h["host"]: h["status"] for h in json.loads(clean.stdout)["hosts"]} == {
        "web-a": "compliant", "web-b": "compliant"}

    conf = files / "web-b.conf"
    conf.write_text(conf.read_text().replace("workers = 4", "workers = 64"))
    metrics = tmp_path / "textfile" / "gpuprov_drift.prom"
    first = _gpuprov("drift", "-i", str(inv), "--playbook", str(play), "--format", "json",
                     "--metrics-file", str(metrics))
    assert first.returncode == 1, first.stderr[-2000:]  # web-c is unreachable
    report = json.loads(first.stdout)
    assert report["schema"] == "gpuprov.drift/1"
    hosts = {h["host"]: h for h in report["hosts"]}
    assert {h: r["status"] for h, r in hosts.items()} == {"web-a": "compliant", "web-b": "drifted",
                                                           "web-c": "unreachable"}
    assert report["counts"] == {"compliant": 1, "drifted": 1, "failed": 0, "unreachable": 1}
    [task] = hosts["web-b"]["tasks"]
    assert task["task"] == "Write the host's settings"
    assert "-workers = 64" in task["diff"] and "+workers = 4" in task["diff"]
    assert SECRET not in first.stdout and "api_key = <redacted>" in task["diff"]
    since = hosts["web-b"]["drifted_since"]
    assert since == report["started"]
    assert conf.read_text().count("workers = 64") == 1, "drift changed the host"
    # The same as Prometheus metrics, for the alerts (ConfigurationDrift, DriftCheckStale).
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.read_text()) for s in f.samples}
    key = report["inventory"]

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"inventory": key, **labels}.items())))]

    assert value("gpuprov_drift_tasks", managed_host="web-b") == 1
    assert value("gpuprov_drift_tasks", managed_host="web-a") == 0
    assert value("gpuprov_drift_host_status", managed_host="web-b", status="drifted") == 1
    assert value("gpuprov_drift_host_status", managed_host="web-b", status="compliant") == 0
    assert value("gpuprov_drift_host_status", managed_host="web-c", status="unreachable") == 1
    started = datetime.fromisoformat(report["started"]).timestamp()
    assert value("gpuprov_drift_last_run_timestamp_seconds") == started
    assert value("gpuprov_drift_drifted_since_timestamp_seconds", managed_host="web-b") == started

    # Still drifted on the next run: since the first run that saw it. Exit 2 without the unreachable host.
    second = _gpuprov("drift", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play), "--format", "junit",
                      "-o", str(tmp_path / "drift.xml"))
    assert second.returncode == 2, second.stderr[-2000:]
    suite = ET.parse(tmp_path / "drift.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    failure = cases["web-b"].find("failure")
    assert failure is not None and f"since {since}" in failure.get("message", "")
    assert cases["web-a"].find("failure") is None and SECRET not in (tmp_path / "drift.xml").read_text()

    markdown = _gpuprov("drift", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play),
                        "--format", "markdown")
    assert f"| web-b | drifted | 1 | {since} |" in markdown.stdout and "```diff" in markdown.stdout
    table = _gpuprov("drift", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play))
    assert any(ln.split()[:2] == ["web-b", "drifted"] for ln in table.stdout.splitlines()), table.stdout

    # fix: only the drifted host is applied (a batch at a time), then drift again: before and after.
    (files / "web-a.conf").unlink()  # drift on web-a that fix --from-last must not see (the last report predates it)
    fixed = _gpuprov("fix", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play), "--from-last",
                     "--batch-size", "1")
    assert fixed.returncode == 0, fixed.stdout[-2000:] + fixed.stderr[-2000:]
    rows = [ln.split() for ln in fixed.stdout.splitlines()]
    assert ["web-b", "drifted", "applied", "compliant"] in rows, fixed.stdout
    assert not any(r and r[0] == "web-a" for r in rows), "fix applied a host the report did not name"
    assert "workers = 4" in conf.read_text() and not (files / "web-a.conf").exists()
    # A fresh drift run finds web-a now, and fix corrects it.
    again = _gpuprov("fix", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert ["web-a", "drifted", "applied", "compliant"] in [ln.split() for ln in again.stdout.splitlines()]
    after = _gpuprov("drift", "-i", str(inv), "-l", "web-a,web-b", "--playbook", str(play), "--format", "json")
    assert after.returncode == 0 and all(h["status"] == "compliant" for h in json.loads(after.stdout)["hosts"])


def test_batch_sizes_and_the_failure_limit():
    from gpuprov import fix

    assert fix.batch_size("1", 8) == 1 and fix.batch_size("25%", 8) == 2 and fix.batch_size("10%", 3) == 1
    assert fix.batches(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    for bad in ("0", "-1", "150%", "x"):
        try:
            fix.batch_size(bad, 4)
        except ValueError as exc:
            assert bad in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")
    rollout = fix.Rollout(max_fail_percentage=25, total=4, failed=["a"])
    assert not rollout.over_limit()
    rollout.failed.append("b")
    assert rollout.over_limit()
