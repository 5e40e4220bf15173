"""node_exporter from Debian's package (12 and 13): the flags gpuprov sets, the textfile collector,
and bad input refused before any change. Basic auth and the upstream release are scenarios of their
own (basic_auth, release)."""

from __future__ import annotations

import pytest
from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_a_lost_restart_is_drift_and_applied,
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    exposure,
    host_in,
    instance,
)

from gpuprov.verify import PASS

HOSTS = [host_in("debian12"), host_in("debian13")]
METRICS = "http://127.0.0.1:9100/metrics"


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


def test_bad_input_fails_before_any_change():
    assert_fails_before_any_change("node_exporter", {"node_exporter_extra_args": ["collector.systemd"]},
                                   "Check the settings", "collector.systemd",
                                   hosts=HOSTS, pre_roles=(), exact_task=True)


def test_a_release_version_without_a_checksum_is_refused():
    assert_fails_before_any_change("node_exporter", {"node_exporter_source": "release",
                                                     "node_exporter_release_version": "1.9.1"},
                                   "Check the release is pinned for this host",
                                   "node_exporter_release_checksums['1.9.1']",
                                   hosts=HOSTS, pre_roles=(), exact_task=True)
