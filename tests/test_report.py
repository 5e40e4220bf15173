"""gpuprov.report: what apply and check print when a run ends, and summary.json, from a run's
events as ansible-runner hands them over."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from gpuprov import report
from gpuprov.events import RunTracker
from gpuprov.runner import HostRecap, RunRequest, RunResult


def _result(tmp_path: Path, events: list[dict], recaps: list[HostRecap], rc: int = 0) -> RunResult:
    tracker = RunTracker()
    for event in events:
        tracker.handle(event)
    return RunResult(rc=rc, status="successful" if rc == 0 else "failed", run_dir=tmp_path, recaps=recaps,
                     tracker=tracker, duration_s=1.5)


def _end(kind: str, host: str, task: str, role: str | None = None, **res) -> dict:
    return {"event": kind, "event_data": {"host": host, "task": task, "role": role, "task_action": "copy",
                                          "res": res}}


def test_a_check_lists_each_hosts_changes_and_the_failures(tmp_path):
    result = _result(tmp_path, [
        _end("runner_on_ok", "gpu-b", "Write the unit", "triton", changed=True),
        _end("runner_on_ok", "gpu-a", "Write the configuration", "tls_front", changed=True),
        _end("runner_on_ok", "gpu-a", "Read the facts", changed=False),
        _end("runner_on_failed", "gpu-c", "Check the settings", "gateway", msg="bad"),
    ], [HostRecap("gpu-a", ok=5, changed=1), HostRecap("gpu-b", ok=4, changed=1),
        HostRecap("gpu-c", ok=1, failed=1)], rc=2)
    text = report.play_report(result, check=True)
    lines = text.splitlines()
    assert lines[1].split() == ["host", "ok", "changed", "failed", "unreachable", "skipped", "duration"]
    assert lines[3].split()[:4] == ["gpu-a", "5", "1", "0"]
    assert "FAILED gpu-c: Check the settings" in lines
    a, b = lines.index("gpu-a: 1 task(s) would change"), lines.index("gpu-b: 1 task(s) would change")
    assert a < b and lines[a + 1] == "  - tls_front : Write the configuration"
    assert lines[b + 1] == "  - triton : Write the unit"
    assert "no changes" not in text  # the run failed: it cannot say the hosts match
    assert lines[-1] == f"artifacts: {tmp_path}"


def test_a_clean_check_says_the_hosts_match_and_an_apply_lists_nothing(tmp_path):
    clean = _result(tmp_path, [_end("runner_on_ok", "gpu-a", "Read the facts")], [HostRecap("gpu-a", ok=1)])
    assert "no changes: the hosts match the repository" in report.play_report(clean, check=True)
    applied = _result(tmp_path, [_end("runner_on_ok", "gpu-a", "Write the unit", "triton", changed=True)],
                      [HostRecap("gpu-a", ok=1, changed=1)])
    text = report.play_report(applied, check=False)
    assert "would change" not in text and "no changes" not in text


def test_summary_names_extra_vars_files_only_never_inline_values(tmp_path):
    result = _result(tmp_path, [_end("runner_on_ok", "gpu-a", "Write the unit", "triton", changed=True)],
                     [HostRecap("gpu-a", ok=3, changed=1, duration_s=2.25)])
    req = RunRequest(command="apply", playbook="playbooks/site.yml", inventories=["inventories/lab"],
                     extra_vars=["@secrets.yml", "tls_ca_passphrase=not-in-the-summary"])
    path = report.write_summary(req, result, datetime(2026, 12, 3, tzinfo=UTC), "linear")
    summary = json.loads(path.read_text())
    assert path == tmp_path / "summary.json"
    assert summary["extra_vars_files"] == ["@secrets.yml"]
    assert "not-in-the-summary" not in path.read_text()
    assert summary["hosts"]["gpu-a"] == {"ok": 3, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0,
                                         "duration_s": 2.25}
    assert summary["changes"] == [{"host": "gpu-a", "task": "triton : Write the unit", "action": "copy"}]


def test_a_host_that_could_not_be_reached_says_why(tmp_path):
    msg = "Task failed: Host key checking is enabled, and SSH reported an unrecognized or mismatching host key."
    result = _result(tmp_path, [
        _end("runner_on_ok", "gpu-a", "Read the facts"),
        _end("runner_on_unreachable", "gpu-b", "Create the service group", "base", msg=msg + "\nmore detail",
             unreachable=True),
    ], [HostRecap("gpu-a", ok=1), HostRecap("gpu-b", ok=4, unreachable=1)], rc=4)
    lines = report.play_report(result, check=False).splitlines()
    assert f"UNREACHABLE gpu-b: {msg}" in lines
    assert not [ln for ln in lines if ln.startswith("UNREACHABLE gpu-a")]


def test_openssh_changed_key_warning_is_reported_by_its_last_line(tmp_path):
    """Ansible's own SSH connection puts OpenSSH's whole warning in the message, banner first."""
    stderr = ("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
              "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
              "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
              "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n"
              "Host key for 10.0.0.5 has changed and you have requested strict checking.\r\n"
              "Host key verification failed.")
    result = _result(tmp_path, [
        _end("runner_on_unreachable", "gpu-b", "Gathering Facts",
             msg="Failed to connect to the host via ssh: " + stderr, unreachable=True),
        # A delegated task that could not reach its peer, under the host that delegated it.
        _end("runner_on_unreachable", "gpu-a", "Gather the facts of mon1", msg="ssh: connect to host mon1: timed out",
             unreachable=True),
    ], [HostRecap("gpu-a", ok=9), HostRecap("gpu-b", unreachable=1)], rc=4)
    lines = report.play_report(result, check=False).splitlines()
    assert "UNREACHABLE gpu-b: Failed to connect to the host via ssh: Host key verification failed." in lines
    assert not [ln for ln in lines if ln.startswith("UNREACHABLE gpu-a")]
