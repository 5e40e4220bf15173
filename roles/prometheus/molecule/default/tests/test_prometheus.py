"""Prometheus on a monitoring host (Debian 12) whose inventory lists two GPU hosts that do not
exist: targets come from the inventory (a host added to gpu_servers is scraped on the next run),
the alert rules pass their promtool unit tests, a rule promtool refuses never replaces the live
ones, and with Alertmanager on, the down targets' alert reaches it and the dead man's switch's
heartbeat reaches its receiver; the services' units are hardened. Targets that ask for credentials
(basic auth, client certificates) are the `secured_targets` scenario's."""

from __future__ import annotations

import json
import os
import re

import pytest
from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_no_changes_in_check_mode,
    exposure,
    failed_tasks,
    instance,
    role_verify,
    run_role,
    wait_until,
)

from gpuprov.verify import FAIL, PASS

MON = instance("gpuprov-prom-debian12")
CA = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"), "ca.crt")
BASE = {"prometheus_probe_ca_cert": CA, "prometheus_scrape_interval": "5s", "prometheus_evaluation_interval": "5s"}


def _gpu_host(address: str) -> dict:
    """A GPU host that does not exist, with the facts Prometheus's configuration is made from under
    "facts" (run_role puts them in the fact cache, where a real host's would be)."""
    return {"ansible_host": address,
            "facts": {"default_ipv4": {"address": address}, "ansible_local": {"gpu": {"gpu_count": 0}}}}


# The GPU hosts converge adds; every run here names them too (a run_role has only Molecule's inventory).
GPUS = {"gpu-a": _gpu_host("192.0.2.10"), "gpu-b": _gpu_host("192.0.2.11")}
ALERTS = {"InferenceLatencyHigh", "InferenceTokenLatencyHigh", "GpuUtilizationHigh", "GpuMemoryHigh", "HostMemoryHigh",
          "InferenceBacklog", "InferenceSuccessRateLow", "TargetDown", "TritonNotReady", "CertificateExpiringSoon",
          "ConfigurationDrift", "DriftCheckStale", "Watchdog"}


def _prometheus(extra: dict | None = None, more_gpus: dict | None = None):
    gpus = {**GPUS, **(more_gpus or {})}
    hosts = {name: {k: v for k, v in host.items() if k != "facts"} for name, host in gpus.items()}
    facts = {name: host["facts"] for name, host in gpus.items() if "facts" in host}
    inventory = {"all": {"children": {"gpu_servers": {"hosts": hosts}}}}
    return run_role("prometheus", {**BASE, **(extra or {})}, hosts="monitoring", extra_inventory=inventory,
                    facts=facts)


def _api(path: str, port: int = 9090) -> dict:
    return json.loads(MON.check_output(f"curl -sS 'http://127.0.0.1:{port}/api/{path}'"))


def _targets() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for t in _api("v1/targets")["data"]["activeTargets"]:
        out.setdefault(t["labels"]["job"], set()).add(t["labels"].get("host", t["labels"]["instance"]))
    return out


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes_but_for_the_gpu_hosts_that_do_not_exist():
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings: Prometheus ready with gpuprov's alerts loaded, and "every target up"
    failing on the two GPU hosts that do not exist (TEST-NET-1), by their addresses. "No alert
    firing" is not judged here: whether TargetDown fires yet depends on how long ago converge ran."""
    checks = {c.name: c for c in role_verify("prometheus")}
    assert {c.host for c in checks.values()} == {"gpuprov-prom-debian12"}, checks
    assert checks["Prometheus: ready"].result == PASS, checks["Prometheus: ready"]
    assert checks["Prometheus: gpuprov's alerts loaded"].result == PASS, checks["Prometheus: gpuprov's alerts loaded"]
    down = checks["Prometheus: every target up"]
    # The message lists the down targets' URLs (cut at 200 characters): the fakes', none of its own.
    assert down.result == FAIL and "targets down: http" in down.found, down
    urls = re.findall(r"https?://[^/, ]+", down.found)
    assert urls and all(u.split("://")[1].startswith(("192.0.2.10:", "192.0.2.11:")) for u in urls[:-1]), down
    assert set(checks) == {"Prometheus: ready", "Prometheus: every target up", "Prometheus: gpuprov's alerts loaded",
                           "Prometheus: no alert firing"}, checks


def test_the_services_are_hardened():
    """Debian's Prometheus unit brings its own hardening; its blackbox exporter's has none (9.2), so
    gpuprov's drop-in adds it, and the probes still run under it."""
    for unit in ("prometheus.service", "prometheus-blackbox-exporter.service"):
        assert exposure(MON, unit) <= EXPOSURE_LIMIT, unit
    assert MON.service("prometheus-blackbox-exporter").is_running
    # A probe still reaches its target under the sandbox: Prometheus over plain http answers 200
    # (the module, which wants TLS, then fails the probe for that).
    url = "http://127.0.0.1:9115/probe?module=gpuprov_triton_ready&target=http://127.0.0.1:9090/-/ready"
    out = MON.check_output(f"curl -sS '{url}'")
    assert "probe_http_status_code 200" in out, out


def test_targets_are_generated_from_the_inventory():
    node = MON.file("/etc/prometheus/file_sd/node.yml").content_string
    assert '"192.0.2.10:9100"' in node and '"192.0.2.11:9100"' in node and 'host: "gpu-b"' in node
    assert '"192.0.2.10:8002"' in MON.file("/etc/prometheus/file_sd/triton.yml").content_string
    assert '"192.0.2.11:9108"' in MON.file("/etc/prometheus/file_sd/gateway.yml").content_string
    assert ("https://192.0.2.11:8443/v2/health/ready"
            in MON.file("/etc/prometheus/file_sd/triton_ready.yml").content_string)
    # No gpu fact for these hosts: no GPU exporter target.
    assert MON.file("/etc/prometheus/file_sd/gpu.yml").content_string.strip().endswith("[]")
    targets = wait_until(lambda: (t := _targets()).get("node") == {"gpu-a", "gpu-b"} and t)
    assert targets["node"] == {"gpu-a", "gpu-b"} and targets["triton"] == {"gpu-a", "gpu-b"}
    assert targets["gateway"] == {"gpu-a", "gpu-b"}
    assert targets["prometheus"] == {"127.0.0.1:9090"}


def test_a_host_added_to_the_group_is_scraped_on_the_next_run():
    result, events = _prometheus(more_gpus={"gpu-c": _gpu_host("192.0.2.12")})
    assert result.rc == 0, failed_tasks(events)
    try:
        assert '"192.0.2.12:9100"' in MON.file("/etc/prometheus/file_sd/node.yml").content_string
        assert wait_until(lambda: "gpu-c" in _targets().get("node", set()), 60)
    finally:
        back, _ = _prometheus()
    assert back.rc == 0
    assert "192.0.2.12" not in MON.file("/etc/prometheus/file_sd/node.yml").content_string


def test_a_gpu_host_whose_facts_cannot_be_had_fails_the_run_by_name_before_any_change():
    """Under --limit (or with a host down) a GPU host's facts may be missing: Prometheus's targets
    would lose that host, or its GPU alerts, without a word. They are gathered for the run, and
    when that fails too the run stops before any change, naming the host."""
    before = MON.file("/etc/prometheus/file_sd/node.yml").content_string
    down = {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_connection": "ssh"}  # refuses at once
    result, events = _prometheus(more_gpus={"gpu-d": down})
    assert result.rc != 0
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check the needed facts are known of every host in gpu_servers"], failures
    assert "these hosts lack them: gpu-d." in failures[0][2]
    assert MON.file("/etc/prometheus/file_sd/node.yml").content_string == before


def test_alert_rules_pass_their_unit_tests_and_are_loaded():
    out = MON.run("cd /etc/prometheus/gpuprov-staging && promtool test rules gpuprov.rules.test.yml")
    assert out.rc == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    rules = {r["name"] for g in _api("v1/rules")["data"]["groups"] for r in g["rules"]}
    assert ALERTS <= rules
    assert MON.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0


def test_an_invalid_rule_is_refused_and_prometheus_keeps_serving():
    live = MON.file("/etc/prometheus/rules/gpuprov.rules.yml").content_string
    result, events = _prometheus({"prometheus_extra_alert_rules": [{"alert": "Broken", "expr": "up ==== 1"}]})
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Stage the alert rules (promtool check rules)"]
    assert result.recaps[0].changed == 0
    assert MON.file("/etc/prometheus/rules/gpuprov.rules.yml").content_string == live
    assert MON.check_output("curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/-/ready") == "200"


@pytest.mark.parametrize("extra, words", [
    ({"prometheus_scrape_interval": "15 seconds"}, "'15 seconds'"),
    ({"prometheus_alert_success_ratio": 1.5}, "prometheus_alert_success_ratio must be in (0, 1] (is 1.5)"),
    ({"prometheus_probe_ca_cert": "/nonexistent/ca.crt"}, "/nonexistent/ca.crt"),
    # A receiver without any *_configs would take the alerts and tell no one.
    ({"prometheus_alertmanager_enabled": True, "prometheus_alertmanager_receiver": {"name": "default"}},
     "prometheus_alertmanager_receiver ('default') reaches no one"),
])
def test_bad_input_fails_before_any_change(extra, words):
    result, events = _prometheus(extra)
    failures = failed_tasks(events)
    assert len(failures) == 1 and words in failures[0][2], failures
    assert result.recaps[0].changed == 0


# A heartbeat service's stand-in on the monitoring host: it keeps the bodies Alertmanager posts.
HEARTBEAT = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/var/tmp/heartbeats.jsonl", "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", 9998), H).serve_forever()
"""


def test_alertmanager_receives_the_down_targets_alert_and_the_heartbeat():
    MON.run("systemctl stop gpuprov-test-heartbeat; rm -f /var/tmp/heartbeats.jsonl")
    assert MON.run("systemd-run --unit gpuprov-test-heartbeat --collect python3 -c %s", HEARTBEAT).rc == 0
    with_am = {"prometheus_alertmanager_enabled": True, "prometheus_alert_target_down_for_seconds": 10,
               "prometheus_alertmanager_receiver": {"name": "lab-webhook",
                                                   "webhook_configs": [{"url": "http://127.0.0.1:9999/alerts"}]},
               "prometheus_alertmanager_deadman_receiver": {
                   "name": "heartbeat", "webhook_configs": [{"url": "http://127.0.0.1:9998/beat"}]},
               "prometheus_alertmanager_deadman_interval": "10s"}
    result, events = _prometheus(with_am)
    assert result.rc == 0, failed_tasks(events)
    assert MON.service("prometheus-alertmanager").is_running
    assert MON.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0
    # Debian's unit has no sandbox: gpuprov's drop-in adds one, and the HA gossip port (Debian's
    # default 0.0.0.0:9094, unauthenticated) is off: only the API listens.
    assert exposure(MON, "prometheus-alertmanager.service") <= EXPOSURE_LIMIT
    listening = MON.check_output("ss -Htulnp")
    assert ":9093 " in listening and ":9094 " not in listening, listening
    # The two GPU hosts in the inventory do not exist: TargetDown fires and reaches Alertmanager.
    def down() -> list[dict]:
        return [a for a in json.loads(MON.check_output("curl -sS http://127.0.0.1:9093/api/v2/alerts"))
                if a["labels"]["alertname"] == "TargetDown"]

    alerts = wait_until(lambda: (found := down()) and {a["labels"].get("host") for a in found} >= {"gpu-a", "gpu-b"}
                       and found, 120)
    assert alerts, down()
    # Only the targets gpuprov generated: the package's example configuration never ran.
    assert {a["labels"].get("host") for a in alerts} == {"gpu-a", "gpu-b"}, alerts
    assert all(a["receivers"][0]["name"] == "lab-webhook" for a in alerts)
    # The dead man's switch: Watchdog always fires, goes only to its own receiver, and keeps arriving.
    def beats() -> list[dict]:
        text = MON.run("cat /var/tmp/heartbeats.jsonl").stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    got = wait_until(lambda: len(found := beats()) >= 2 and found, 120)
    assert got, beats()
    assert all(b["receiver"] == "heartbeat" and {a["labels"]["alertname"] for a in b["alerts"]} == {"Watchdog"}
               and b["status"] == "firing" for b in got), got
    watchdog = [a for a in json.loads(MON.check_output("curl -sS http://127.0.0.1:9093/api/v2/alerts"))
                if a["labels"]["alertname"] == "Watchdog"]
    assert [r["name"] for a in watchdog for r in a["receivers"]] == ["heartbeat"], watchdog
