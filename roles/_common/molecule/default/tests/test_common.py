"""_common's entry points on Debian 12 and 13, included with tasks_from as gpuprov's roles include
them. On its own the role refuses to run; an entry point without its arguments is refused by its
argument spec; `packages` asks dpkg first (a host that has them all needs no package index) and has
apt install only what is missing; `unit_current` restarts a running unit whose files changed after
it started (a lost handler), shows that as a change in check mode and leaves a stopped unit alone;
`peer_facts` gives a limited run the other hosts' facts and fails, naming it, on a peer it cannot
reach, before any change. controller_wheelhouse and pushed_venv are applied in the gateway,
gpu_exporter and triton scenarios."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from gpuprov_molecule import (
    assert_a_lost_restart_is_drift_and_applied,
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    check_mode_changes,
    failed_tasks,
    host_in,
    instance,
    run_playbook,
)

D12, D13 = host_in("debian12"), host_in("debian13")
PROBE = "gpuprov-common-probe"
DROP_IN = f"/etc/systemd/system/{PROBE}.service.d/10-gpuprov.conf"
CONVERGE = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "/nonexistent")) / "converge.yml"


def _entry(entry: str, **entry_vars: Any) -> dict[str, Any]:
    return {"name": f"_common {entry}", "ansible.builtin.include_role": {"name": "_common", "tasks_from": entry},
            "vars": entry_vars}


def _play(tasks: list[dict[str, Any]], **kwargs: Any):
    """One play of `tasks` on the scenario's hosts, through gpuprov's runner."""
    with tempfile.TemporaryDirectory(prefix="gpuprov-common-") as tmp:
        path = Path(tmp) / "play.yml"
        path.write_text(yaml.safe_dump([{"name": "_common's entry points", "hosts": "gpu_servers", "become": True,
                                         "tasks": tasks}]))
        return run_playbook(path, **kwargs)


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_on_its_own_it_refuses_and_changes_nothing():
    assert_fails_before_any_change("_common", {}, "Refuse to run on its own", "_common is an internal role of gpuprov",
                                   hosts=[D12, D13], pre_roles=(), exact_task=True)


def test_an_entry_point_without_its_arguments_is_refused_by_its_spec():
    result, events = _play([_entry("packages", _common_packages_purpose="nothing")])
    failures = failed_tasks(events)
    assert sorted(h for h, _, _ in failures) == [D12, D13], failures
    assert all("Validating arguments against arg spec 'packages'" in task and "_common_packages" in msg
               for _, task, msg in failures), failures
    assert all(r.changed == 0 for r in result.recaps)


def test_installed_packages_need_no_package_index_and_a_missing_one_is_installed():
    # Debian 12 without any package index: the package is installed, so apt is never asked.
    host = instance(D12)
    host.check_output("mv /var/lib/apt/lists /var/lib/apt/lists.aside && mkdir -p /var/lib/apt/lists/partial")
    try:
        result, events = run_playbook(CONVERGE, limit=D12)
        assert result.rc == 0, failed_tasks(events)
        assert result.tracker.changes == [], result.tracker.changes
        skipped = [e["event_data"].get("task") for e in events
                   if e.get("event") == "runner_on_skipped" and e["event_data"].get("host") == D12]
        assert "Install the missing packages (a directory lister)" in skipped, skipped
    finally:
        host.check_output("rm -rf /var/lib/apt/lists && mv /var/lib/apt/lists.aside /var/lib/apt/lists")
    # Debian 13 without it: apt installs that one, the only change of the run.
    host = instance(D13)
    host.check_output("dpkg --purge tree")
    result, events = run_playbook(CONVERGE, limit=D13)
    assert result.rc == 0, failed_tasks(events)
    installed = "_common : Install the missing packages (a directory lister)"
    assert [c.label() for c in result.tracker.changes] == [installed], result.tracker.changes
    assert host.package("tree").is_installed


def test_the_service_account_is_a_system_user_without_login_or_home():
    for name in (D12, D13):
        host = instance(name)
        user = host.user("gpuprov-common-svc")
        assert user.exists and user.uid < 1000 and user.shell == "/usr/sbin/nologin"
        assert user.group == "gpuprov-common-svc" and "gpuprov-common-extra" in user.groups
        assert user.home == "/var/lib/gpuprov-common-svc" and not host.file(user.home).exists
        assert host.group("gpuprov-common-extra").gid < 1000


def test_the_service_directories_have_the_owners_and_modes_given():
    """Each with what its entry gives, root, root and 0755 where it gives nothing."""
    want = {"/etc/gpuprov-common-svc": ("root", "gpuprov-common-svc", 0o750),
            "/var/log/gpuprov-common-svc": ("gpuprov-common-svc", "gpuprov-common-svc", 0o750),
            "/var/log/gpuprov-common-svc/archive": ("gpuprov-common-svc", "root", 0o755)}
    for name in (D12, D13):
        host = instance(name)
        for path, (owner, group, mode) in want.items():
            d = host.file(path)
            assert d.is_directory and (d.user, d.group, d.mode) == (owner, group, mode), (name, path)


def test_a_service_account_keeps_groups_it_was_given_elsewhere():
    """Supplementary groups are added to, never replaced: a group another role or the admin added
    stays (a second account run with other groups changes only what it adds)."""
    host = instance(D13)
    account = {"_common_service_user": "gpuprov-common-svc", "_common_service_home": "/var/lib/gpuprov-common-svc",
               "_common_service_group": "gpuprov-common-svc", "_common_service_groups": ["gpuprov-common-other"]}
    try:
        result, events = _play([_entry("service_account", **account)], limit=D13)
        assert result.rc == 0, failed_tasks(events)
        assert {"gpuprov-common-extra", "gpuprov-common-other"} <= set(host.user("gpuprov-common-svc").groups)
    finally:
        host.run("gpasswd -d gpuprov-common-svc gpuprov-common-other; groupdel gpuprov-common-other")
    assert_no_changes_in_check_mode(limit=D13)


def test_a_lost_restart_is_drift_and_the_next_apply_restarts_the_unit():
    changes = assert_a_lost_restart_is_drift_and_applied(D12, PROBE, DROP_IN)
    assert changes == [f"{D12}: _common : Restart the unit to apply its changed files ({PROBE})"], changes


def test_a_stopped_unit_is_not_judged():
    host = instance(D13)
    current = _entry("unit_current", _common_unit_name=PROBE, _common_unit_files=[DROP_IN])
    host.check_output(f"systemctl stop {PROBE}; sleep 1; touch {DROP_IN}")
    try:
        for check in (True, False):
            result, events = _play([current], check=check, limit=D13)
            assert result.rc == 0, failed_tasks(events)
            assert result.tracker.changes == [], result.tracker.changes
            assert not host.service(PROBE).is_running
    finally:
        host.check_output(f"systemctl start {PROBE}")


def test_a_limited_run_has_the_other_hosts_facts():
    """Limited to Debian 12, the peers file still names Debian 13 with its address (from the fact
    cache or gathered for the run): check mode finds nothing to change."""
    assert check_mode_changes(limit=D12) == []
    address = instance(D13).check_output("ip -4 route get 192.0.2.1 | grep -o 'src [0-9.]*' | cut -d' ' -f2")
    assert address
    assert f"{D13} {address}" in instance(D12).file("/etc/gpuprov-common-peers").content_string.splitlines()


def test_a_peer_that_cannot_be_reached_fails_the_run_naming_it_before_any_change(tmp_path):
    ghost = "gpuprov-common-ghost"  # no such container
    extra = tmp_path / "ghost.yml"
    extra.write_text(yaml.safe_dump({"all": {"hosts": {ghost: {"ansible_connection": "docker"}}},
                                     "gpu_servers": {"hosts": {ghost: {}}}}))
    result, events = run_playbook(CONVERGE, limit=D12, inventories=(str(extra),))
    failures = failed_tasks(events)
    check = "Check the needed facts are known of every host in gpu_servers"
    assert [(h, t) for h, t, _ in failures] == [(D12, check)], failures
    assert ghost in failures[0][2] and "Nothing was changed" in failures[0][2]
    assert result.tracker.changes == []
