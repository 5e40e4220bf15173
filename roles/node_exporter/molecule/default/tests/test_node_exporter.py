"""node_exporter from Debian's package (12 and 13): the flags gpuprov sets, the textfile collector,
and basic auth through the exporter's web config; and the upstream-release source on Debian 12,
against a stand-in release (GitHub cannot be reached here)."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest
from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_a_lost_restart_is_drift_and_applied,
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    exposure,
    failed_tasks,
    host_in,
    instance,
    run_role,
    wait_until,
)

from gpuprov.verify import PASS

HOSTS = [host_in("debian12"), host_in("debian13")]
METRICS = "http://127.0.0.1:9100/metrics"
# bcrypt of "scrape-secret" (the exporter's web config takes hashes only).
HASH = "$2b$10$J6.q5KFL1FWtzHgMhy0iDOcCkOkz1UailCJDgh.7SMzn8rDGSfG.K"


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes():
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings, on the converged hosts."""
    assert_role_verify("node_exporter", HOSTS, {
        "Node exporter: service active": PASS,
        "Node exporter: metrics served": PASS,
    })


def test_a_flags_change_whose_restart_was_lost_is_drift_and_applied():
    """A run that wrote the exporter's flags and then failed never ran its restart handler: the flags
    file newer than the exporter's start shows as a change in check mode, an apply restarts it, and
    the check after it is clean. (Before the tests below, which leave other settings behind.)"""
    unit = "prometheus-node-exporter"
    assert_a_lost_restart_is_drift_and_applied(HOSTS[0], unit, f"/etc/default/{unit}", "node_exporter",
                                               {"node_exporter_disabled_collectors": ["wifi"]})


@pytest.mark.parametrize("name", HOSTS)
def test_exporter_serves_machine_metrics_with_gpuprovs_flags(name):
    host = instance(name)
    assert host.service("prometheus-node-exporter").is_running
    assert host.service("prometheus-node-exporter").is_enabled
    metrics = host.check_output(f"curl -sS {METRICS}")
    assert "node_cpu_seconds_total" in metrics and "node_memory_MemAvailable_bytes" in metrics
    assert 'node_scrape_collector_success{collector="wifi"}' not in metrics
    args = host.file("/etc/default/prometheus-node-exporter").content_string
    assert "--web.listen-address=0.0.0.0:9100" in args and "--no-collector.wifi" in args
    # Debian's unit has no hardening of its own (9.2): gpuprov's drop-in brings it under the limit.
    assert exposure(host, "prometheus-node-exporter.service") <= EXPOSURE_LIMIT


@pytest.mark.parametrize("name", HOSTS)
def test_textfile_collector_publishes_a_prom_file(name):
    host = instance(name)
    host.check_output("printf 'gpuprov_test_marker 42\\n' > /var/lib/prometheus/node-exporter/gpuprov_test.prom")
    try:
        assert "gpuprov_test_marker 42" in host.check_output(f"curl -sS {METRICS}")
    finally:
        host.run("rm -f /var/lib/prometheus/node-exporter/gpuprov_test.prom")


def test_basic_auth_through_the_web_config():
    host, name = instance(HOSTS[1]), HOSTS[1]
    result, events = run_role("node_exporter", {"node_exporter_web_config": {"basic_auth_users": {"prometheus": HASH}}},
                              limit=name)
    assert result.rc == 0, failed_tasks(events)
    # The hash is a secret of sorts: the task that writes it says nothing.
    assert HASH not in str(events)
    try:
        config = host.file("/etc/prometheus/node-exporter-web.yml")
        assert config.mode == 0o640 and config.group == "prometheus"
        code = "curl -sS -o /dev/null -w '%{http_code}' "
        assert _answers(host)
        assert host.check_output(code + METRICS) == "401"
        assert host.check_output(code + "-u prometheus:scrape-secret " + METRICS) == "200"
        assert host.check_output(code + "-u prometheus:wrong " + METRICS) == "401"
    finally:
        back, _ = run_role("node_exporter", {}, limit=name)
    assert back.rc == 0 and not host.file("/etc/prometheus/node-exporter-web.yml").exists
    assert _answers(host)
    assert host.check_output("curl -sS -o /dev/null -w '%{http_code}' " + METRICS) == "200"


def test_bad_input_fails_before_any_change():
    assert_fails_before_any_change("node_exporter", {"node_exporter_extra_args": ["collector.systemd"]},
                                   "Check the settings", "collector.systemd",
                                   hosts=HOSTS, pre_roles=(), exact_task=True)


@pytest.fixture(scope="module")
def stand_in_release(tmp_path_factory) -> dict:
    """A release in upstream's layout (node_exporter-<v>.linux-amd64/node_exporter) around the
    Debian 12 host's own node_exporter binary, under file://<dir>/v<v>/, with its sha256."""
    host = instance(HOSTS[0])
    version = host.check_output("prometheus-node-exporter --version 2>&1").split("version ")[1].split("+")[0].split()[0]
    root = tmp_path_factory.mktemp("release")
    name = f"node_exporter-{version}.linux-amd64"
    binary = root / "node_exporter"
    subprocess.run(["docker", "cp", f"{HOSTS[0]}:/usr/bin/prometheus-node-exporter", str(binary)], check=True)
    (root / f"v{version}").mkdir()
    tarball = root / f"v{version}" / f"{name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(binary, arcname=f"{name}/node_exporter")
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    settings = {"node_exporter_source": "release", "node_exporter_release_version": version,
                "node_exporter_release_checksums": {version: {"amd64": sha}},
                "node_exporter_release_base_url": f"file://{root}",
                "node_exporter_controller_cache": str(root / "cache"),
                "node_exporter_disabled_collectors": ["netstat"]}
    return {"version": version, "sha": sha, "cache": root / "cache" / f"{name}.tar.gz", "settings": settings}


def _answers(host, fail_on_error: bool = False, timeout: float = 60) -> bool:
    """The exporter answers (with a success status when fail_on_error) within timeout s: a role run
    that restarted it returns before it listens again."""
    curl = f"curl -sS {'-f ' if fail_on_error else ''}-o /dev/null " + METRICS
    return wait_until(lambda: host.run(curl).rc == 0, timeout, every=1)


def _serving(host) -> bool:
    return _answers(host, fail_on_error=True)


def test_the_upstream_release_replaces_the_package_and_back(stand_in_release):
    host, name = instance(HOSTS[0]), HOSTS[0]
    release, version = stand_in_release["settings"], stand_in_release["version"]
    try:
        result, events = run_role("node_exporter", release, limit=name)
        assert result.rc == 0, failed_tasks(events)
        # Downloaded once onto the controller, verified; the host runs it under gpuprov's unit.
        cache = stand_in_release["cache"]
        assert hashlib.sha256(Path(cache).read_bytes()).hexdigest() == stand_in_release["sha"]
        assert host.file("/usr/local/bin/node_exporter").linked_to == f"/opt/node_exporter/{version}/node_exporter"
        assert not host.service("prometheus-node-exporter").is_running
        assert not host.service("prometheus-node-exporter").is_enabled
        unit = host.service("node_exporter")
        assert unit.is_running and unit.is_enabled
        pid = host.check_output("systemctl show -p MainPID --value node_exporter")
        assert host.check_output(f"stat -c %U /proc/{pid}") == "node_exporter"
        assert host.run("systemd-analyze verify /etc/systemd/system/node_exporter.service").rc == 0
        # The same hardening drop-in as the package's unit.
        assert exposure(host, "node_exporter.service") <= EXPOSURE_LIMIT
        assert _serving(host)
        metrics = host.check_output(f"curl -sS {METRICS}")
        # gpuprov's flags reach the release's binary: netstat (on by default) is off.
        assert 'node_scrape_collector_success{collector="cpu"} 1' in metrics
        assert 'node_scrape_collector_success{collector="netstat"}' not in metrics
        assert "--no-collector.netstat" in host.file("/etc/default/node_exporter").content_string

        again, _ = run_role("node_exporter", release, limit=name)
        assert again.rc == 0 and again.recaps[0].changed == 0
        check, _ = run_role("node_exporter", release, check=True, limit=name)
        assert check.rc == 0 and check.tracker.changes == [], check.tracker.changes

        # A tarball that does not match the pinned checksum: the download fails, nothing changes,
        # the cached copy and the running exporter stay.
        wrong = {**release, "node_exporter_release_checksums": {version: {"amd64": "0" * 64}}}
        bad, events = run_role("node_exporter", wrong, limit=name)
        failures = failed_tasks(events)
        download = "Download onto the controller, checksum verified (the release)"
        assert [t for _, t, _ in failures] == [download], failures
        assert bad.recaps[0].changed == 0
        assert hashlib.sha256(Path(cache).read_bytes()).hexdigest() == stand_in_release["sha"]
        assert _serving(host)
    finally:
        back, events = run_role("node_exporter", {}, limit=name)
    assert back.rc == 0, failed_tasks(events)
    assert host.service("prometheus-node-exporter").is_running
    assert not host.service("node_exporter").is_running and not host.service("node_exporter").is_enabled
    assert _serving(host)


def test_a_release_version_without_a_checksum_is_refused():
    assert_fails_before_any_change("node_exporter", {"node_exporter_source": "release",
                                                     "node_exporter_release_version": "1.9.1"},
                                   "Check the release is pinned for this host",
                                   "node_exporter_release_checksums['1.9.1']",
                                   hosts=HOSTS, pre_roles=(), exact_task=True)
