"""node_exporter from Debian's package (12 and 13): the flags gpuprov sets, the textfile collector,
and basic auth through the exporter's web config."""

from __future__ import annotations

import pytest
from gpuprov_molecule import (
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    failed_tasks,
    instance,
    run_role,
)

HOSTS = ["gpuprov-nodeexp-debian12", "gpuprov-nodeexp-debian13"]
METRICS = "http://127.0.0.1:9100/metrics"
# bcrypt of "scrape-secret" (the exporter's web config takes hashes only).
HASH = "$2b$10$J6.q5KFL1FWtzHgMhy0iDOcCkOkz1UailCJDgh.7SMzn8rDGSfG.K"


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


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
        assert host.check_output(code + METRICS) == "401"
        assert host.check_output(code + "-u prometheus:scrape-secret " + METRICS) == "200"
        assert host.check_output(code + "-u prometheus:wrong " + METRICS) == "401"
    finally:
        back, _ = run_role("node_exporter", {}, limit=name)
    assert back.rc == 0 and not host.file("/etc/prometheus/node-exporter-web.yml").exists
    assert host.check_output("curl -sS -o /dev/null -w '%{http_code}' " + METRICS) == "200"


def test_bad_input_fails_before_any_change():
    assert_fails_before_any_change("node_exporter", {"node_exporter_extra_args": ["collector.systemd"]},
                                   "Check the settings", "collector.systemd", hosts=HOSTS, pre_roles=(), exact_task=True)
