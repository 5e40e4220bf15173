"""Prometheus scraping and probing targets that ask for credentials (converge.yml), on one Debian
12 monitoring host that also stands for a GPU host: its node exporter wants basic auth and its
front (a stand-in on port 9443) a client certificate from the client CA. Prometheus ran without
the credentials first (prepare.yml); with them, the node target is up and the probe passes; the
password and key sit in root:prometheus 0640 files, never in prometheus.yml or a run's output.
Last, the credentials taken away: the node target is down with a 401, the probe fails and the files
are gone."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gpuprov_molecule import (
    assert_no_changes_in_check_mode,
    failed_tasks,
    host_in,
    instance,
    role_verify,
    run_playbook,
    run_role,
    wait_until,
)

from gpuprov.verify import PASS

HOST = host_in("monitoring")
MON = instance(HOST)
PKI = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "pki"
CONVERGE = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "/nonexistent")) / "converge.yml"
PASSWORD = "scrape-secret"  # converge.yml's
PASSWORD_FILE = "/etc/prometheus/node-exporter.password"
CLIENT_FILES = ("/etc/prometheus/probe-client.crt", "/etc/prometheus/probe-client.key")


def _address() -> str:
    return MON.check_output("hostname -I").split()[0]


def _node_target() -> dict:
    targets = json.loads(MON.check_output("curl -sS http://127.0.0.1:9090/api/v1/targets"))["data"]["activeTargets"]
    found = [t for t in targets if t["labels"]["job"] == "node" and t["labels"].get("host") == "front"]
    return found[0] if found and found[0]["health"] != "unknown" else {}


def _probe() -> str:
    return MON.check_output("curl -sS 'http://127.0.0.1:9115/probe?module=gpuprov_triton_ready"
                            f"&target=https://{_address()}:9443/v2/health/ready'")


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_node_exporter_is_scraped_with_its_password():
    target = wait_until(lambda: (t := _node_target()) and t["health"] == "up" and t, 60)
    assert target, _node_target()
    secret = MON.file(PASSWORD_FILE)
    assert (secret.user, secret.group, secret.mode) == ("root", "prometheus", 0o640)
    assert secret.content_string == PASSWORD
    config = MON.file("/etc/prometheus/prometheus.yml").content_string
    assert PASSWORD not in config and f"password_file: {PASSWORD_FILE}" in config


def test_the_probes_present_the_client_certificate_to_the_front():
    assert wait_until(lambda: "probe_success 1" in _probe(), 120), _probe()
    for path in CLIENT_FILES:
        f = MON.file(path)
        assert (f.user, f.group) == ("root", "prometheus"), path
    assert MON.file(CLIENT_FILES[1]).mode == 0o640
    assert MON.file(CLIENT_FILES[1]).content_string.strip() == (PKI / "probe.key").read_text().strip()


def test_the_roles_own_verify_sees_prometheus_ready():
    """`gpuprov verify`'s checks: Prometheus ready with gpuprov's alerts loaded. "Every target up" is
    not judged here: the GPU host's other exporters (Triton's, the gateway's) do not run on it."""
    checks = {c.name: c for c in role_verify("prometheus")}
    assert checks["Prometheus: ready"].result == PASS, checks["Prometheus: ready"]
    assert checks["Prometheus: gpuprov's alerts loaded"].result == PASS, checks


def test_neither_secret_is_in_a_runs_output():
    result, events = run_playbook(CONVERGE, check=True)
    assert result.rc == 0 and result.tracker.changes == [], failed_tasks(events)
    key_line = (PKI / "probe.key").read_text().strip().splitlines()[1]
    text = json.dumps(events)
    assert PASSWORD not in text and key_line not in text
    for path in Path(result.run_dir).rglob("*"):
        if path.is_file():
            content = path.read_text(errors="replace")
            assert PASSWORD not in content and key_line not in content, path


def test_z_without_the_credentials_the_target_is_refused_and_the_probe_fails():
    """Last: the same host's run without the password and the client certificate (its front
    without mutual TLS in the inventory) removes both files; the node exporter then refuses the
    scrape (401) and the front the probe."""
    gpu = {"front": {"ansible_host": _address()}}
    facts = {"front": {"default_ipv4": {"address": _address()}, "ansible_local": {"gpu": {"gpu_count": 0}}}}
    settings = {"prometheus_probe_ca_cert": str(PKI / "ca.crt"), "prometheus_probe_port": 9443,
                "prometheus_scrape_interval": "5s", "prometheus_evaluation_interval": "5s"}
    result, events = run_role("prometheus", settings, hosts="monitoring", facts=facts,
                              extra_inventory={"all": {"children": {"gpu_servers": {"hosts": gpu}}}})
    assert result.rc == 0, failed_tasks(events)
    # The files go only after Prometheus reloaded (and waited for: it reloads without waiting) and
    # the blackbox exporter restarted without them: removed first, every scrape and probe in between
    # failed on the missing file (this scenario's first full run caught a node target so).
    done = [e["event_data"]["task"] for e in events if e.get("event") == "runner_on_ok"]
    removed = done.index("Remove the node exporter's scrape password (no basic auth)")
    assert done.index("Reload prometheus") < done.index("Wait for Prometheus to run the configuration without it") \
        < removed, done
    assert done.index("Restart blackbox exporter") < done.index(
        "Remove the probes' client certificate and key (no mutual TLS)"), done
    assert not MON.file(PASSWORD_FILE).exists
    assert not any(MON.file(path).exists for path in CLIENT_FILES)
    target = wait_until(lambda: (t := _node_target()) and t["health"] == "down" and t, 60)
    assert target and "401" in target["lastError"], _node_target()
    assert wait_until(lambda: "probe_success 0" in _probe(), 60), _probe()
