"""gateway on Debian 12 and 13 without Triton: installed from the controller's wheelhouse, running
as its own user under a hardened unit on loopback, only the keys' hashes on the host, 401 without a
key and 503 with Retry-After when nothing can serve, a removed key refused after the next apply by a
reload (same process), zero changes in check mode, and bad input refused before any change. The
cloud fallback is a scenario of its own (cloud_fallback)."""

from __future__ import annotations

import json

import pytest
from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_a_lost_restart_is_drift_and_applied,
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    exposure,
    failed_tasks,
    gateway_completion,
    host_in,
    instance,
    run_role,
)

from gpuprov.verify import FAIL, PASS

HOSTS = [host_in("debian12"), host_in("debian13")]
APP = "molecule-gateway-app-key-00000000000000"
OLD = "molecule-gateway-old-key-00000000000000"
KEYS = [{"id": "app", "owner": "test", "key": APP, "role": "user", "models": ["*"]},
        {"id": "old", "owner": "test", "key": OLD, "role": "user", "models": ["*"]}]


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_a_lost_restart_is_drift_and_the_next_apply_restarts_the_gateway():
    """A run that wrote a new unit (or new packages) and failed before its handlers left the gateway
    on the old ones; its configuration alone would be reloaded, these need a restart."""
    assert_a_lost_restart_is_drift_and_applied(HOSTS[0], "gpuprov-gateway.service",
                                               "/etc/systemd/system/gpuprov-gateway.service", "gateway",
                                               {"gateway_api_keys": KEYS})


@pytest.mark.parametrize("name", HOSTS)
def test_runs_unprivileged_on_loopback_under_a_hardened_unit(name):
    host = instance(name)
    assert host.service("gpuprov-gateway").is_running and host.service("gpuprov-gateway").is_enabled
    assert host.check_output(
        "ps -o user= -C gpuprov-gateway || "
        "ps -o user= -p $(systemctl show -p MainPID --value gpuprov-gateway)"
    ).split()[0] == "gpuprov-gateway"
    props = host.check_output(
        "systemctl show -p NoNewPrivileges -p ProtectSystem -p CapabilityBoundingSet gpuprov-gateway")
    assert "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props
    assert host.socket("tcp://127.0.0.1:8080").is_listening and not host.socket("tcp://0.0.0.0:8080").is_listening
    # /metrics on every address (Prometheus scrapes it from the monitoring host; the firewall role
    # keeps everyone else out).
    assert host.socket("tcp://0.0.0.0:9108").is_listening
    assert host.check_output("curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/healthz") == "200"
    # No Triton on this host: not ready, and /metrics only on the metrics address.
    assert host.check_output("curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/readyz") == "503"
    assert host.check_output("curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/metrics") == "404"
    assert "gateway_breaker_state{backend=\"local\"} 0.0" in host.check_output("curl -sS http://127.0.0.1:9108/metrics")
    assert host.service("gpuprov-gateway-audit-prune.timer").is_enabled
    for unit in ("gpuprov-gateway.service", "gpuprov-gateway-audit-prune.service"):
        assert exposure(host, unit) <= EXPOSURE_LIMIT, unit


@pytest.mark.parametrize("name", HOSTS)
def test_only_the_keys_hashes_reach_the_host(name):
    host = instance(name)
    config = host.file("/etc/gpuprov-gateway/gateway.yaml")
    assert config.mode == 0o640 and config.user == "root"
    assert "hash: sha256:" in config.content_string
    found = host.run(f"grep -rl -e {APP} -e {OLD} /etc /opt/gpuprov /var/log/gpuprov-gateway")
    assert found.stdout == "", found.stdout


@pytest.mark.parametrize("name", HOSTS)
def test_no_key_is_401_and_nothing_to_serve_is_503(name):
    host = instance(name)
    status, body, _ = gateway_completion(host, None)
    assert status == 401 and body["error"]["type"]
    status, body, headers = gateway_completion(host, APP)
    assert status == 503, body
    assert "retry-after:" in headers.lower()
    audit = host.check_output("cat /var/log/gpuprov-gateway/audit-*.jsonl")
    assert '"key_id": "app"' in audit.replace('":"', '": "') and APP not in audit


def test_a_configure_only_run_makes_a_moved_directory():
    """The configuration and audit directories are made by the service account step, which runs
    under the configure tag too: a configure-only run (check mode) after the audit directory moved
    would make it, rather than failing on a missing directory."""
    moved = "/var/log/gpuprov-gateway-moved"
    result, events = run_role("gateway", {"gateway_api_keys": KEYS, "gateway_audit_dir": moved},
                              pre_roles=("gpu_facts",), limit=HOSTS[0], check=True, tags="gateway_configure")
    assert result.rc == 0, failed_tasks(events)
    task = "Create the service's directories"
    assert any(task in c.task for c in result.tracker.changes), result.tracker.changes
    items = [e["event_data"]["res"] for e in events
             if e.get("event") == "runner_item_on_ok" and task in e["event_data"].get("task", "")]
    assert any(r.get("changed") and moved in json.dumps(r) for r in items), items
    assert not instance(HOSTS[0]).file(moved).exists


def test_a_removed_key_is_refused_after_apply_by_a_reload():
    hosts = [instance(n) for n in HOSTS]
    pids = [h.check_output("systemctl show -p MainPID --value gpuprov-gateway") for h in hosts]
    result, _ = run_role("gateway", {"gateway_api_keys": KEYS[:1]}, pre_roles=("gpu_facts",))
    assert result.rc == 0
    try:
        for host, pid in zip(hosts, pids):
            assert gateway_completion(host, OLD)[0] == 401
            assert gateway_completion(host, APP)[0] == 503  # still known: nothing to serve, not refused
            assert host.check_output("systemctl show -p MainPID --value gpuprov-gateway") == pid
    finally:
        assert run_role("gateway", {"gateway_api_keys": KEYS}, pre_roles=("gpu_facts",))[0].rc == 0


@pytest.mark.parametrize(
    "extra, task, words",
    [
        ({"gateway_api_keys": [KEYS[0], {**KEYS[1], "id": "app"}]}, "Check the API keys", "duplicate ids"),
        ({"gateway_api_keys": [{**KEYS[0], "key": "short"}]}, "Check the API keys", "Entries that are not: app"),
        ({"gateway_fallback_enabled": True}, "Check the cloud fallback", "at least one endpoint"),
        ({"gateway_port": 9108}, "Check the role's variables", "different for the API and /metrics"),
    ],
)
def test_bad_input_fails_before_any_change(extra, task, words):
    assert_fails_before_any_change("gateway", extra, task, words)


def test_the_roles_own_verify_finds_nothing_to_serve():
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings, on the converged hosts. Nothing serves a model here (no Triton, the
    cloud off): the gateway runs and refuses a request without a key, and verify says it is not
    ready and a completion gets 503, as it must on a host whose backend is gone. Last: its two
    failed completions open the breaker of the local backend, which the tests above expect closed."""
    checks = assert_role_verify("gateway", HOSTS, {
        "Gateway: service active": PASS,
        "Gateway: a request without a key is refused (401)": PASS,
        "Gateway: ready": FAIL,
        "Gateway: an authenticated completion answers": FAIL,
    })
    found = {(c.host, c.name): c.found for c in checks}
    for h in HOSTS:
        assert found[(h, "Gateway: ready")] == "127.0.0.1:8080/readyz: HTTP 503"
        assert found[(h, "Gateway: an authenticated completion answers")] == "HTTP 503"
