"""node_exporter from the upstream release on Debian 12, against a stand-in release built from the
package's binary (prepare.yml; GitHub cannot be reached here). The host had Debian's package before
converge: the release replaced it. A tarball that does not match its pinned checksum changes
nothing; and switching back to the package (last) stops the release's unit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    exposure,
    failed_tasks,
    host_in,
    http_answers,
    instance,
    run_role,
)

from gpuprov.verify import PASS

HOST = host_in("debian12")
METRICS = "http://127.0.0.1:9100/metrics"
RUN_DIR = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])


@pytest.fixture(scope="module")
def release() -> dict[str, Any]:
    """The settings prepare.yml wrote (converge.yml's)."""
    return yaml.safe_load((RUN_DIR / "release.yml").read_text())


def _tarball(release: dict[str, Any]) -> tuple[Path, str]:
    """The controller's cached copy of the release and its pinned sha256."""
    version = release["node_exporter_release_version"]
    cache = Path(release["node_exporter_controller_cache"]) / f"node_exporter-{version}.linux-amd64.tar.gz"
    return cache, release["node_exporter_release_checksums"][version]["amd64"]


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes():
    checks = assert_role_verify("node_exporter", [HOST], {
        "Node exporter: service active": PASS,
        "Node exporter: metrics served": PASS,
    })
    assert any("node_exporter is active (release)" in c.found for c in checks), [c.found for c in checks]


def test_the_release_replaced_the_package(release):
    host = instance(HOST)
    version = release["node_exporter_release_version"]
    # Downloaded once onto the controller and verified; the host runs it under gpuprov's unit.
    cache, sha = _tarball(release)
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == sha
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


def test_gpuprovs_flags_reach_the_releases_binary():
    host = instance(HOST)
    assert http_answers(host, METRICS, success=True)
    metrics = host.check_output(f"curl -sS {METRICS}")
    # netstat (on by default) is off.
    assert 'node_scrape_collector_success{collector="cpu"} 1' in metrics
    assert 'node_scrape_collector_success{collector="netstat"}' not in metrics
    assert "--no-collector.netstat" in host.file("/etc/default/node_exporter").content_string


def test_a_tarball_that_does_not_match_its_checksum_changes_nothing(release):
    """The download fails, nothing changes on the host; the cached copy and the running exporter
    stay."""
    host = instance(HOST)
    version = release["node_exporter_release_version"]
    cache, sha = _tarball(release)
    wrong = {**release, "node_exporter_release_checksums": {version: {"amd64": "0" * 64}}}
    bad, events = run_role("node_exporter", wrong)
    failures = failed_tasks(events)
    download = "Download onto the controller, checksum verified (the release)"
    assert [t for _, t, _ in failures] == [download], failures
    assert bad.recaps[0].changed == 0
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == sha
    assert http_answers(host, METRICS, success=True)


def test_z_switching_back_to_the_package():
    """Last: the release's unit stopped and disabled, the package's running again."""
    host = instance(HOST)
    back, events = run_role("node_exporter", {})
    assert back.rc == 0, failed_tasks(events)
    assert host.service("prometheus-node-exporter").is_running
    assert not host.service("node_exporter").is_running and not host.service("node_exporter").is_enabled
    assert http_answers(host, METRICS, success=True)
